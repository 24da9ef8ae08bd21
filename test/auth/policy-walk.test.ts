/**
 * The policy walk: every RPC of every billing service the server mounts has
 * an entry in the policy table (src/auth/policy.ts), and the running server
 * enforces it. Each RPC is called through the real server with no key, an
 * admin key, a service key, an account key naming its own account, and one
 * naming another account (every `account_id` of the request filled in, top
 * level and one message down, e.g. `auto_top_up.account_id`). A call the
 * policy denies must fail with UNAUTHENTICATED (no key) or PERMISSION_DENIED
 * and that reason; an allowed call may answer anything but those two and
 * INTERNAL. Server streams are aborted after a second.
 */
import { create, type DescMessage, type DescMethod, type DescService } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { expect } from "chai";
import { policyEntry, type Access } from "../../src/auth/policy.js";
import { SERVED_SERVICES } from "../../src/routes.js";
import { ACCOUNT_A, ACCOUNT_B, TOKENS, client, errorReason } from "../harness.js";

const BILLING_SERVICES = SERVED_SERVICES.filter((s) => s.typeName.startsWith("billing."));

/** Who calls, and the account the request names. */
interface Caller {
  name: string;
  token: string | undefined;
  role?: "admin" | "service" | "account";
  /** The account every account_id of the request names. */
  accountId: string;
  /** For account keys: whether that account is the key's own. */
  own?: boolean;
}

const CALLERS: Caller[] = [
  { name: "no key", token: undefined, accountId: ACCOUNT_A },
  { name: "admin key", token: TOKENS.admin, role: "admin", accountId: ACCOUNT_A },
  { name: "service key", token: TOKENS.service, role: "service", accountId: ACCOUNT_A },
  { name: "account key, own account", token: TOKENS.accountA, role: "account", accountId: ACCOUNT_A, own: true },
  { name: "account key, another account", token: TOKENS.accountA, role: "account", accountId: ACCOUNT_B, own: false },
];

/**
 * Whether the request's account_id fields name the account it acts on:
 * a top-level one does; a nested one does when the message is created
 * (Create…) or has no id of its own (settings keyed by account, like
 * auto_top_up). An update of a resource named by id acts on the loaded
 * resource's account, whatever the nested account_id says.
 */
function namesAccount(method: DescMethod): boolean {
  return accountIdPaths(method.input).some(([head, tail]) => {
    if (tail === undefined) return true;
    const nested = method.input.fields.find((f) => f.localName === head);
    return method.name.startsWith("Create") || (nested?.fieldKind === "message" && !nested.message.fields.some((f) => f.name === "id"));
  });
}

/** The account_id fields of a request: top level, and of the messages one level down. */
function accountIdPaths(input: DescMessage): string[][] {
  const paths: string[][] = [];
  for (const f of input.fields) {
    if (f.name === "account_id" && f.fieldKind === "scalar") paths.push([f.localName]);
    if (f.fieldKind === "message") {
      const nested = f.message.fields.find((n) => n.name === "account_id" && n.fieldKind === "scalar");
      if (nested) paths.push([f.localName, nested.localName]);
    }
  }
  return paths;
}

/** A request naming `accountId` in every account_id field. */
function requestFor(method: DescMethod, accountId: string): Record<string, unknown> {
  const req: Record<string, unknown> = {};
  for (const [head, tail] of accountIdPaths(method.input)) {
    if (tail === undefined) req[head!] = accountId;
    else req[head!] = { ...((req[head!] as object | undefined) ?? {}), [tail]: accountId };
  }
  return create(method.input, req) as unknown as Record<string, unknown>;
}

/** The denial the policy prescribes for `caller` on an RPC with rule `access`, or undefined when it lets the call through. */
function expectedDenial(access: Access, caller: Caller, namesAccount: boolean): { code: Code; reason: string } | undefined {
  if (access === "open") return undefined;
  if (!caller.role) return { code: Code.Unauthenticated, reason: "UNAUTHENTICATED" };
  const denied = { code: Code.PermissionDenied, reason: "PERMISSION_DENIED" };
  switch (access) {
    case "public":
      return undefined;
    case "admin":
      return caller.role === "admin" ? undefined : denied;
    case "internal":
      return caller.role === "account" ? denied : undefined;
    case "account":
    case "owner":
      if (caller.role === "admin") return undefined;
      if (caller.role === "service") return access === "owner" ? denied : undefined;
      return namesAccount && !caller.own ? denied : undefined;
  }
}

/** Calls `method` as `caller`; the ConnectError it failed with, or undefined. Streams are aborted after a second. */
async function call(service: DescService, method: DescMethod, caller: Caller): Promise<ConnectError | undefined> {
  const c = client(service, caller.token) as unknown as Record<string, (req: unknown, options?: unknown) => unknown>;
  const req = requestFor(method, caller.accountId);
  try {
    if (method.methodKind === "server_streaming") {
      const signal = AbortSignal.timeout(1_000);
      for await (const _ of c[method.localName]!(req, { signal }) as AsyncIterable<unknown>) {
        // Messages are fine; only how the stream fails matters.
      }
    } else {
      await c[method.localName]!(req);
    }
    return undefined;
  } catch (err) {
    return ConnectError.from(err);
  }
}

describe("auth: the policy walk", function () {
  this.timeout(120_000);

  it("has a policy entry for every RPC of every served billing service", () => {
    const missing = BILLING_SERVICES.flatMap((s) => s.methods.filter((m) => policyEntry(s.typeName, m.name) === undefined).map((m) => `${s.typeName}/${m.name}`));
    expect(missing, "RPCs without a policy entry (src/auth/policy.ts)").to.deep.equal([]);
    expect(BILLING_SERVICES.length).to.be.greaterThan(5);
  });

  for (const service of BILLING_SERVICES) {
    it(`enforces the policy on every RPC of ${service.typeName}, for every kind of caller`, async () => {
      const wrong: string[] = [];
      for (const method of service.methods) {
        const access = policyEntry(service.typeName, method.name);
        if (access === undefined) continue; // reported by the test above
        for (const caller of CALLERS) {
          const err = await call(service, method, caller);
          const denial = expectedDenial(access, caller, namesAccount(method));
          const got = err ? `${Code[err.code]} (${errorReason(err) ?? "no reason"}): ${err.rawMessage}` : "OK";
          const where = `${method.name} [${access}] as ${caller.name}`;
          if (denial) {
            if (!err || err.code !== denial.code || errorReason(err) !== denial.reason) wrong.push(`${where}: expected ${Code[denial.code]} (${denial.reason}), got ${got}`);
          } else if (err && [Code.Unauthenticated, Code.PermissionDenied, Code.Internal].includes(err.code)) {
            wrong.push(`${where}: expected the call to be let through, got ${got}`);
          }
        }
      }
      expect(wrong, wrong.join("\n")).to.deep.equal([]);
    });
  }
});
