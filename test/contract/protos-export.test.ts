/**
 * `npm run protos:export -- <dir>`: the self-contained contract for callers in
 * other languages. (.ci/python-client-check compiles it with protoc and calls
 * the service from Python; this checks the tree itself, without protoc.)
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema, type FileDescriptorProto } from "@bufbuild/protobuf/wkt";
import { expect } from "chai";
import { importsOf } from "../../scripts/protos-export.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const SCRIPT = path.join(ROOT, "scripts/protos-export.ts");

function exportTo(dir: string): string {
  return execFileSync(process.execPath, ["--import", "tsx", SCRIPT, dir], { cwd: ROOT, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

function filesUnder(dir: string, prefix = ""): string[] {
  return readdirSync(path.join(dir, prefix), { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? filesUnder(dir, `${prefix}${e.name}/`) : [`${prefix}${e.name}`]))
    .sort();
}

describe("contract export (npm run protos:export)", () => {
  let tmp: string;
  let out: string;
  before(function () {
    this.timeout(60_000);
    tmp = mkdtempSync(path.join(os.tmpdir(), "protos-export-test-"));
    out = path.join(tmp, "contract");
    exportTo(out);
  });
  after(() => rmSync(tmp, { recursive: true, force: true }));

  it("copies our files unchanged and adds exactly the Google files they (and the error model) need", () => {
    const ours = filesUnder(path.join(ROOT, "proto"));
    const files = filesUnder(out);
    for (const f of ours) expect(readFileSync(path.join(out, f), "utf8"), f).to.equal(readFileSync(path.join(ROOT, "proto", f), "utf8"));

    // The closure, by buf's parse: from our files and google.rpc's Status and error details.
    const set = fromBinary(FileDescriptorSetSchema, readFileSync(path.join(out, "billing.binpb")));
    const byName = new Map<string, FileDescriptorProto>(set.file.map((f) => [f.name, f]));
    const needed = new Set<string>();
    const visit = (name: string) => {
      if (needed.has(name)) return;
      needed.add(name);
      const fd = byName.get(name);
      expect(fd, `${name} in billing.binpb`).to.not.equal(undefined);
      fd!.dependency.forEach(visit);
    };
    [...ours, "google/rpc/status.proto", "google/rpc/error_details.proto"].forEach(visit);

    expect(files).to.deep.equal([...needed, "billing.binpb"].sort());
    expect([...byName.keys()].sort()).to.deep.equal([...needed].sort());
    expect(files).to.include.members(["google/protobuf/struct.proto", "google/protobuf/timestamp.proto", "google/type/date.proto", "google/protobuf/any.proto"]);
  });

  it("names the same imports as buf does", () => {
    const set = fromBinary(FileDescriptorSetSchema, readFileSync(path.join(out, "billing.binpb")));
    for (const fd of set.file) {
      expect(importsOf(readFileSync(path.join(out, fd.name), "utf8")).sort(), fd.name).to.deep.equal([...fd.dependency].sort());
    }
    expect(importsOf('// import "a.proto";\n/* import "b.proto"; */\nimport public "c.proto";\nimport "d.proto"; import weak "e.proto";')).to.deep.equal([
      "c.proto",
      "d.proto",
      "e.proto",
    ]);
  });

  it("carries the comments (source info) and replaces a previous export, but never writes into another folder", () => {
    const set = fromBinary(FileDescriptorSetSchema, readFileSync(path.join(out, "billing.binpb")));
    const credit = set.file.find((f) => f.name === "billing/v1/credit_service.proto");
    expect(credit?.sourceCodeInfo?.location.some((l) => l.leadingComments.trim() !== "")).to.equal(true);

    writeFileSync(path.join(out, "stale.proto"), 'syntax = "proto3";\n');
    exportTo(out);
    expect(filesUnder(out)).to.not.include("stale.proto");

    const other = path.join(tmp, "other");
    mkdirSync(other);
    writeFileSync(path.join(other, "keep.txt"), "mine");
    expect(() => exportTo(other)).to.throw(/not empty/);
    expect(filesUnder(other)).to.deep.equal(["keep.txt"]);
  });
});
