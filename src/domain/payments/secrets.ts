/**
 * Provider secrets at rest: AES-256-GCM with a key derived from
 * BILLING_SECRET_KEY (node:crypto). Stored as "v1:<iv>:<tag>:<ciphertext>"
 * in base64url. Decryption happens only where a secret is used (webhook
 * signature checks); no response or log ever carries one.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";
import { failedPrecondition, Reason } from "../errors.js";

/** Encrypts and decrypts provider secrets. */
export class SecretBox {
  private readonly key?: Buffer;

  constructor(secretKey: string | undefined) {
    if (secretKey) this.key = createHash("sha256").update("billing.secrets.v1:").update(secretKey).digest();
  }

  get configured(): boolean {
    return this.key !== undefined;
  }

  encrypt(plaintext: string): string {
    const key = this.requireKey();
    const iv = randomBytes(12);
    const cipher = createCipheriv("aes-256-gcm", key, iv);
    const body = Buffer.concat([cipher.update(plaintext, "utf8"), cipher.final()]);
    return ["v1", iv.toString("base64url"), cipher.getAuthTag().toString("base64url"), body.toString("base64url")].join(":");
  }

  /** The plaintext, or undefined if it cannot be decrypted (wrong key, tampered). */
  decrypt(stored: string): string | undefined {
    if (!this.key) return undefined;
    const [version, iv, tag, body] = stored.split(":");
    if (version !== "v1" || !iv || !tag || body === undefined) return undefined;
    try {
      const decipher = createDecipheriv("aes-256-gcm", this.key, Buffer.from(iv, "base64url"));
      decipher.setAuthTag(Buffer.from(tag, "base64url"));
      return Buffer.concat([decipher.update(Buffer.from(body, "base64url")), decipher.final()]).toString("utf8");
    } catch {
      return undefined;
    }
  }

  private requireKey(): Buffer {
    if (!this.key) throw failedPrecondition(Reason.SecretKeyMissing, "BILLING_SECRET_KEY is not configured, so provider secrets cannot be stored");
    return this.key;
  }
}
