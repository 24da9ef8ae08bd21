/**
 * Which URLs webhooks may be sent to (SSRF protection).
 *
 * A webhook URL is chosen by an admin but fetched by the service from inside
 * its network, so by default it must not reach loopback, private,
 * link-local (incl. cloud metadata at 169.254.169.254), unique-local,
 * carrier-grade NAT, multicast or reserved addresses, over IPv4 or IPv6
 * (incl. IPv4-mapped and NAT64 forms; the local-use NAT64 prefix, SIIT
 * IPv4-translated addresses and Teredo are refused whole, since what they
 * reach depends on a translator or relay the check cannot see). The check runs twice: at
 * registration (the URL's host or what it resolves to now) and at every
 * send, on the address actually connected to (DNS can change in between).
 * WEBHOOK_ALLOW_PRIVATE_URLS=on lifts it (tests, private deployments).
 */
import dns from "node:dns";
import net, { type LookupFunction } from "node:net";
import { invalidField } from "../errors.js";

const MAX_URL_LENGTH = 2048;

/** How long a registration waits for DNS before it accepts the URL unresolved (the send checks again). */
const REGISTRATION_DNS_TIMEOUT_MS = 2_000;

const BLOCKED = new net.BlockList();
for (const [prefix, bits] of [
  ["0.0.0.0", 8], // "this network"
  ["10.0.0.0", 8], // private
  ["100.64.0.0", 10], // carrier-grade NAT
  ["127.0.0.0", 8], // loopback
  ["169.254.0.0", 16], // link-local, cloud metadata
  ["172.16.0.0", 12], // private
  ["192.0.0.0", 24], // IETF protocol assignments
  ["192.0.2.0", 24], // documentation
  ["192.88.99.0", 24], // 6to4 relay anycast
  ["192.168.0.0", 16], // private
  ["198.18.0.0", 15], // benchmarking
  ["198.51.100.0", 24], // documentation
  ["203.0.113.0", 24], // documentation
  ["224.0.0.0", 4], // multicast
  ["240.0.0.0", 4], // reserved, broadcast
] as const) {
  BLOCKED.addSubnet(prefix, bits, "ipv4");
}
for (const [prefix, bits] of [
  ["::", 128], // unspecified
  ["::1", 128], // loopback
  ["100::", 64], // discard
  ["64:ff9b:1::", 48], // local-use NAT64 (RFC 8215): translated to whatever the local network routes
  ["::ffff:0:0:0", 96], // SIIT IPv4-translated (::ffff:0:a.b.c.d)
  ["2001::", 32], // Teredo: tunnels to an IPv4 host through a relay
  ["2001:db8::", 32], // documentation
  ["fc00::", 7], // unique-local (incl. AWS metadata fd00:ec2::254)
  ["fe80::", 10], // link-local
  ["fec0::", 10], // site-local (deprecated)
  ["ff00::", 8], // multicast
] as const) {
  BLOCKED.addSubnet(prefix, bits, "ipv6");
}

/** Whether `address` (an IP literal) is one webhooks must not reach unless allowed. Non-IPs count as blocked. */
export function isPrivateAddress(address: string): boolean {
  const ip = address.startsWith("[") && address.endsWith("]") ? address.slice(1, -1) : address;
  const family = net.isIP(ip);
  if (family === 4) return BLOCKED.check(ip, "ipv4");
  if (family !== 6) return true;
  const embedded = embeddedIpv4(ip);
  if (embedded !== undefined) return BLOCKED.check(embedded, "ipv4");
  return BLOCKED.check(ip, "ipv6");
}

/**
 * The IPv4 address an IPv6 address stands for, if it is one of the forms
 * that reach IPv4 hosts: IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible
 * (::a.b.c.d, deprecated), NAT64 (64:ff9b::a.b.c.d) and 6to4 (2002:AABB:CCDD::).
 */
function embeddedIpv4(ip: string): string | undefined {
  const words = expandIpv6(ip);
  if (!words) return undefined;
  const v4 = (hi: number, lo: number) => `${hi >> 8}.${hi & 0xff}.${lo >> 8}.${lo & 0xff}`;
  const zero = (from: number, to: number) => words.slice(from, to).every((w) => w === 0);
  if (zero(0, 5) && words[5] === 0xffff) return v4(words[6]!, words[7]!);
  if (zero(0, 6) && (words[6] !== 0 || words[7]! > 1)) return v4(words[6]!, words[7]!);
  if (words[0] === 0x64 && words[1] === 0xff9b && zero(2, 6)) return v4(words[6]!, words[7]!);
  if (words[0] === 0x2002) return v4(words[1]!, words[2]!);
  return undefined;
}

/** The eight 16-bit words of an IPv6 literal (with an optional dotted IPv4 tail). */
function expandIpv6(ip: string): number[] | undefined {
  let text = ip.split("%")[0]!.toLowerCase();
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (dotted) {
    const parts = dotted[1]!.split(".").map(Number);
    text = text.slice(0, -dotted[1]!.length) + `${((parts[0]! << 8) | parts[1]!).toString(16)}:${((parts[2]! << 8) | parts[3]!).toString(16)}`;
  }
  const [head, tail] = text.split("::") as [string, string | undefined];
  const parse = (s: string) => (s === "" ? [] : s.split(":").map((w) => parseInt(w, 16)));
  const h = parse(head);
  const t = tail === undefined ? [] : parse(tail);
  const fill = 8 - h.length - t.length;
  if (fill < 0 || (tail === undefined && fill !== 0)) return undefined;
  const words = [...h, ...new Array<number>(fill).fill(0), ...t];
  return words.every((w) => Number.isInteger(w) && w >= 0 && w <= 0xffff) ? words : undefined;
}

/** Host names that always mean this machine or its network, whatever DNS says. */
function isLocalName(host: string): boolean {
  const h = host.toLowerCase().replace(/\.$/, "");
  return h === "localhost" || h.endsWith(".localhost") || h.endsWith(".local") || h.endsWith(".internal") || h === "";
}

/**
 * Checks a webhook URL's form: absolute http(s), at most 2048 characters,
 * no credentials or fragment. Returns it normalised (what is stored and
 * fetched). INVALID_ARGUMENT naming `field` otherwise.
 */
export function parseWebhookUrl(raw: string, field: string): URL {
  if (raw === "") throw invalidField(field, "is required");
  if ([...raw].length > MAX_URL_LENGTH) throw invalidField(field, `must be at most ${MAX_URL_LENGTH} characters`);
  if (/[\u0000-\u0020\u007f-\u009f]/.test(raw)) throw invalidField(field, "must not contain spaces or control characters");
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw invalidField(field, "is not an absolute URL like https://example.com/webhooks");
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") throw invalidField(field, `must be an http or https URL (got ${url.protocol.replace(/:$/, "")})`);
  if (url.username !== "" || url.password !== "") throw invalidField(field, "must not contain credentials (user:password@)");
  if (url.hash !== "") throw invalidField(field, "must not contain a fragment (#…)");
  if (url.hostname === "") throw invalidField(field, "must name a host");
  if (url.href.length > MAX_URL_LENGTH) throw invalidField(field, `must be at most ${MAX_URL_LENGTH} characters once normalised`);
  return url;
}

/**
 * The registration-time address check: refuses a URL whose host is (or now
 * resolves to) a private address unless `allowPrivate`. A name that does not
 * resolve (yet) is accepted: every send checks the address it connects to.
 */
export async function checkWebhookHost(url: URL, field: string, allowPrivate: boolean): Promise<void> {
  if (allowPrivate) return;
  const host = url.hostname;
  const refuse = (what: string) => invalidField(field, `${what}; webhooks may not reach loopback, private, link-local or metadata addresses (WEBHOOK_ALLOW_PRIVATE_URLS=on allows them)`);
  if (net.isIP(host.replace(/^\[|\]$/g, ""))) {
    if (isPrivateAddress(host)) throw refuse(`${host} is not a public address`);
    return;
  }
  if (isLocalName(host)) throw refuse(`${host} is a local name`);
  const addresses = await resolveWithin(host, REGISTRATION_DNS_TIMEOUT_MS);
  const blocked = addresses.find((a) => isPrivateAddress(a));
  if (blocked) throw refuse(`${host} resolves to ${blocked}`);
}

function resolveWithin(host: string, ms: number): Promise<string[]> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve([]), ms);
    dns.lookup(host, { all: true, verbatim: true }, (err, found) => {
      clearTimeout(timer);
      resolve(err ? [] : found.map((a) => a.address));
    });
  });
}

/** Thrown (as a socket error) when a send would reach a refused address. */
export class BlockedAddressError extends Error {
  readonly code = "EBLOCKEDADDRESS";
  constructor(host: string, address: string) {
    super(`refused to connect: ${host} resolves to ${address}, a private or loopback address (WEBHOOK_ALLOW_PRIVATE_URLS is off)`);
    this.name = "BlockedAddressError";
  }
}

/**
 * A `lookup` for http(s).request that refuses private addresses, so the
 * check applies to the very address the socket connects to.
 */
export const publicOnlyLookup: LookupFunction = (hostname, options, callback) => {
  dns.lookup(hostname, { ...options, all: true, verbatim: true }, (err, found) => {
    if (err) return (callback as (e: Error) => void)(err);
    const blocked = found.find((a) => isPrivateAddress(a.address));
    if (blocked) return (callback as (e: Error) => void)(new BlockedAddressError(hostname, blocked.address));
    if (isLocalName(hostname)) return (callback as (e: Error) => void)(new BlockedAddressError(hostname, found[0]?.address ?? "?"));
    if ((options as { all?: boolean }).all) return (callback as (e: null, a: dns.LookupAddress[]) => void)(null, found);
    const first = found[0];
    if (!first) return (callback as (e: Error) => void)(Object.assign(new Error(`${hostname} has no address`), { code: "ENOTFOUND" }));
    (callback as (e: null, a: string, f: number) => void)(null, first.address, first.family);
  });
};
