/**
 * The one way the compiled encoders (src/binary-encoder.ts,
 * src/json-encoder.ts) plan a message type from its descriptor: its fields
 * in number order, each planned by the encoder's own `fieldPlan`; no plan
 * when a field, or a type it holds however deep, is one the encoder does not
 * take (the encoder then leaves the type to protobuf-es). Types that hold
 * themselves (google.protobuf.Struct and Value) resolve through `plans`.
 */
import type { DescField, DescMessage } from "@bufbuild/protobuf";

export interface MessagePlan<F> {
  typeName: string;
  fields: F[];
}

/** The plans made so far in one compilation (a type in progress is there already). */
export type Plans<F> = Map<DescMessage, MessagePlan<F> | undefined>;

export function planMessage<F>(desc: DescMessage, plans: Plans<F>, fieldPlan: (f: DescField, plans: Plans<F>) => F | undefined): MessagePlan<F> | undefined {
  if (plans.has(desc)) return plans.get(desc);
  const plan: MessagePlan<F> = { typeName: desc.typeName, fields: [] };
  plans.set(desc, plan); // before the fields: a type may hold itself
  for (const f of [...desc.fields].sort((a, b) => a.number - b.number)) {
    const p = fieldPlan(f, plans);
    if (p === undefined) {
      plans.set(desc, undefined);
      return undefined;
    }
    plan.fields.push(p);
  }
  return plan;
}
