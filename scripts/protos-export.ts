/**
 * `npm run protos:export -- <dir>`: writes the API contract as a
 * self-contained proto tree that any language's toolchain compiles with
 * nothing from npm:
 *
 *   <dir>/billing/v1/*.proto      ours, copied unchanged from proto/
 *   <dir>/google/...              exactly the Google files they need,
 *                                 transitively, from the installed npm packages
 *   <dir>/billing.binpb           a FileDescriptorSet of all of them (buf build,
 *                                 with source info, so comments travel too)
 *
 * so that `protoc -I <dir> --python_out=out <dir>/billing/v1/*.proto` works.
 *
 * Besides what proto/ imports, the tree holds the error model every RPC
 * answers with (google.rpc.Status carrying ErrorInfo and BadRequest in
 * grpc-status-details-bin, see common.proto), so callers can decode error
 * details from the same tree.
 *
 * <dir> must be empty, missing, or a previous export (it then gets replaced).
 * Works offline: buf ships in node_modules and builds a local directory.
 */
import { execFileSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const OURS = path.join(ROOT, "proto");
const DESCRIPTOR_SET = "billing.binpb";

/** Files exported besides ours although no file of ours imports them: the error details model. */
const ERROR_MODEL = ["google/rpc/status.proto", "google/rpc/error_details.proto"];

const require = createRequire(import.meta.url);

/** Where imports are looked up, in order: ours first, then the npm packages shipping Google's files. */
function searchPath(): string[] {
  // google-proto-files ships google/{rpc,type} and the well-known google/protobuf/*.proto.
  const googleProtoFiles = path.dirname(require.resolve("google-proto-files/package.json"));
  return [OURS, googleProtoFiles];
}

function bufBinary(): string {
  const pkg = path.dirname(require.resolve("@bufbuild/buf/package.json"));
  return path.join(pkg, "bin", "buf");
}

/** Every .proto under dir, as import paths relative to it, sorted. */
function protoFilesUnder(dir: string, prefix = ""): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(path.join(dir, prefix), { withFileTypes: true })) {
    const rel = prefix === "" ? entry.name : `${prefix}/${entry.name}`;
    if (entry.isDirectory()) out.push(...protoFilesUnder(dir, rel));
    else if (entry.isFile() && entry.name.endsWith(".proto")) out.push(rel);
  }
  return out.sort();
}

/** The import paths a .proto file names (public and weak too), comments ignored. */
export function importsOf(source: string): string[] {
  const code = source.replace(/\/\*[\s\S]*?\*\//g, "").replace(/\/\/[^\n]*/g, "");
  return [...code.matchAll(/(?:^|;|\s)import\s+(?:(?:public|weak)\s+)?"([^"]+)"\s*;/g)].map((m) => m[1]!);
}

/** import path -> absolute source file, for the roots and everything they import. */
function closure(roots: string[], dirs: string[]): Map<string, string> {
  const found = new Map<string, string>();
  const pending: { file: string; from?: string }[] = roots.map((file) => ({ file }));
  while (pending.length > 0) {
    const { file, from } = pending.pop()!;
    if (found.has(file)) continue;
    const dir = dirs.find((d) => existsSync(path.join(d, file)));
    if (!dir) throw new Error(`cannot find ${file}${from ? ` (imported by ${from})` : ""} in ${dirs.join(", ")}`);
    const abs = path.join(dir, file);
    found.set(file, abs);
    for (const dep of importsOf(readFileSync(abs, "utf8"))) pending.push({ file: dep, from: file });
  }
  return found;
}

/** Makes target ready to receive the export: created, or emptied of a previous export. */
function prepareTarget(target: string): void {
  if (!existsSync(target)) return void mkdirSync(target, { recursive: true });
  if (!statSync(target).isDirectory()) throw new Error(`${target} is not a directory`);
  const entries = readdirSync(target);
  if (entries.length === 0) return;
  if (!entries.includes(DESCRIPTOR_SET)) throw new Error(`${target} is not empty and holds no previous export (${DESCRIPTOR_SET}); refusing to write into it`);
  for (const entry of entries) rmSync(path.join(target, entry), { recursive: true, force: true });
}

function main(argv: string[]): void {
  const args = argv.filter((a) => a !== "--");
  if (args.length !== 1 || args[0]!.startsWith("-")) {
    process.stderr.write("usage: npm run protos:export -- <dir>\n");
    process.exit(2);
  }
  const target = path.resolve(args[0]!);
  const dirs = searchPath();
  const ours = protoFilesUnder(OURS);
  if (ours.length === 0) throw new Error(`no .proto files under ${OURS}`);
  const files = closure([...ours, ...ERROR_MODEL], dirs);

  // Stage first, so buf sees exactly the exported files and a failure leaves target untouched.
  const stage = mkdtempSync(path.join(os.tmpdir(), "protos-export-"));
  try {
    for (const [rel, abs] of files) {
      mkdirSync(path.dirname(path.join(stage, rel)), { recursive: true });
      cpSync(abs, path.join(stage, rel));
    }
    const binpb = path.join(stage, DESCRIPTOR_SET);
    execFileSync(bufBinary(), ["build", stage, "-o", `${binpb}#format=binpb`], { cwd: stage, stdio: ["ignore", "inherit", "inherit"] });

    // The descriptor set must describe exactly the tree, and the tree must be closed under imports.
    const set = fromBinary(FileDescriptorSetSchema, readFileSync(binpb));
    const described = set.file.map((f) => f.name).sort();
    const exported = [...files.keys()].sort();
    if (described.join("\n") !== exported.join("\n")) {
      throw new Error(`${DESCRIPTOR_SET} describes [${described.join(", ")}] but the tree holds [${exported.join(", ")}]`);
    }
    for (const f of set.file) {
      for (const dep of f.dependency) if (!files.has(dep)) throw new Error(`${f.name} depends on ${dep}, which is not exported`);
    }

    prepareTarget(target);
    cpSync(stage, target, { recursive: true });
    const google = exported.filter((f) => !ours.includes(f));
    process.stdout.write(`exported ${ours.length} billing + ${google.length} google files and ${DESCRIPTOR_SET} (${set.file.length} files) to ${target}\n`);
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    main(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`protos:export: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  }
}
