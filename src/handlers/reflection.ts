/**
 * gRPC server reflection, v1 and v1alpha, answered from the protobuf-es
 * registry of the files this server serves, so grpcurl and `buf curl` work
 * without proto files.
 */
import { create, createRegistry, toBinary, type DescFile, type Registry } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import * as v1 from "../../gen/grpc/reflection/v1/reflection_pb.js";
import * as v1alpha from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";

/** The request shape both versions share. */
interface ReflectionRequest {
  host: string;
  messageRequest:
    | { case: "fileByFilename"; value: string }
    | { case: "fileContainingSymbol"; value: string }
    | { case: "fileContainingExtension"; value: { containingType: string; extensionNumber: number } }
    | { case: "allExtensionNumbersOfType"; value: string }
    | { case: "listServices"; value: string }
    | { case: undefined; value?: undefined };
}

type Answer =
  | { case: "fileDescriptorResponse"; value: { fileDescriptorProto: Uint8Array[] } }
  | { case: "allExtensionNumbersResponse"; value: { baseTypeName: string; extensionNumber: number[] } }
  | { case: "listServicesResponse"; value: { service: { name: string }[] } }
  | { case: "errorResponse"; value: { errorCode: number; errorMessage: string } };

/** Answers one reflection request from `registry`, listing `services`. */
function answer(registry: Registry, filesByName: Map<string, DescFile>, services: string[], req: ReflectionRequest): Answer {
  const notFound = (what: string): Answer => ({ case: "errorResponse", value: { errorCode: 5, errorMessage: `${what} not found` } });
  const files = (file: DescFile | undefined): Answer => {
    if (!file) return notFound("file");
    const seen = new Set<string>();
    const out: Uint8Array[] = [];
    const visit = (f: DescFile) => {
      if (seen.has(f.name)) return;
      seen.add(f.name);
      out.push(toBinary(FileDescriptorProtoSchema, f.proto));
      f.dependencies.forEach(visit);
    };
    visit(file);
    return { case: "fileDescriptorResponse", value: { fileDescriptorProto: out } };
  };
  const m = req.messageRequest;
  switch (m.case) {
    case "listServices":
      return { case: "listServicesResponse", value: { service: services.map((name) => ({ name })) } };
    case "fileByFilename":
      return files(filesByName.get(m.value));
    case "fileContainingSymbol": {
      const symbol = m.value;
      const direct = registry.get(symbol);
      if (direct) return files(direct.file);
      // A method or enum value: look up its parent.
      const parent = registry.get(symbol.slice(0, symbol.lastIndexOf(".")));
      return parent ? files(parent.file) : notFound(`symbol ${symbol}`);
    }
    case "fileContainingExtension":
      return notFound(`extension ${m.value.extensionNumber} of ${m.value.containingType}`);
    case "allExtensionNumbersOfType": {
      const type = registry.getMessage(m.value);
      return type ? { case: "allExtensionNumbersResponse", value: { baseTypeName: m.value, extensionNumber: [] } } : notFound(`type ${m.value}`);
    }
    default:
      return { case: "errorResponse", value: { errorCode: 3, errorMessage: "empty reflection request" } };
  }
}

/** Creates both reflection services over the given files and service names. */
export function createReflectionHandlers(files: DescFile[], services: string[]) {
  const registry = createRegistry(...files);
  const filesByName = new Map<string, DescFile>();
  const collect = (f: DescFile) => {
    if (filesByName.has(f.name)) return;
    filesByName.set(f.name, f);
    f.dependencies.forEach(collect);
  };
  files.forEach(collect);
  const impl1: ServiceImpl<typeof v1.ServerReflection> = {
    async *serverReflectionInfo(requests) {
      for await (const req of requests) {
        yield create(v1.ServerReflectionResponseSchema, {
          validHost: req.host,
          originalRequest: req,
          messageResponse: answer(registry, filesByName, services, req as ReflectionRequest) as never,
        });
      }
    },
  };
  const implAlpha: ServiceImpl<typeof v1alpha.ServerReflection> = {
    async *serverReflectionInfo(requests) {
      for await (const req of requests) {
        yield create(v1alpha.ServerReflectionResponseSchema, {
          validHost: req.host,
          originalRequest: req,
          messageResponse: answer(registry, filesByName, services, req as ReflectionRequest) as never,
        });
      }
    },
  };
  return { v1: impl1, v1alpha: implAlpha };
}
