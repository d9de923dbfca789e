import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import forge from 'node-forge';

export interface KeyAndCert {
  /** PEM of the RSA private key (PKCS#8). */
  keyPem: string;
  /** PEM of the certificate. */
  certPem: string;
  /** DER of the certificate. */
  certDer: Buffer;
}

export interface CertOptions {
  commonName: string;
  /** Sign with this CA; self-signed when absent. */
  issuer?: KeyAndCert;
  /** Marks the certificate as a CA (basicConstraints cA, keyCertSign). */
  isCA?: boolean;
  /** DNS names and IP addresses for subjectAltName (server certificates). */
  dnsNames?: string[];
  ipAddresses?: string[];
  /** Validity from now; default 1 day (backdated 1 hour for clock skew). */
  days?: number;
}

/**
 * An RSA-2048 key (node:crypto: fast) and an X.509 certificate for it (node-forge),
 * SHA-256 signed. Test-only material: never use outside tests.
 */
export function makeCertificate(opts: CertOptions): KeyAndCert {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const keyPem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  const key = forge.pki.privateKeyFromPem(keyPem);
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.setRsaPublicKey(key.n, key.e);
  // A positive serial: first byte below 0x80 (Go's parser rejects negative serials).
  cert.serialNumber = '01' + randomBytes(15).toString('hex');
  const now = Date.now();
  cert.validity.notBefore = new Date(now - 3_600_000);
  cert.validity.notAfter = new Date(now + (opts.days ?? 1) * 86_400_000);
  const subject = [
    { name: 'commonName', value: opts.commonName },
    { name: 'organizationName', value: 'Ferry tests' },
  ];
  cert.setSubject(subject);
  cert.setIssuer(
    opts.issuer ? forge.pki.certificateFromPem(opts.issuer.certPem).subject.attributes : subject,
  );
  const extensions: object[] = [];
  if (opts.isCA) {
    extensions.push({ name: 'basicConstraints', cA: true, critical: true });
    extensions.push({
      name: 'keyUsage',
      keyCertSign: true,
      cRLSign: true,
      digitalSignature: true,
      critical: true,
    });
  } else {
    extensions.push({ name: 'basicConstraints', cA: false });
    extensions.push({
      name: 'keyUsage',
      digitalSignature: true,
      keyEncipherment: true,
      critical: true,
    });
  }
  const altNames = [
    ...(opts.dnsNames ?? []).map((value) => ({ type: 2, value })),
    ...(opts.ipAddresses ?? []).map((ip) => ({ type: 7, ip })),
  ];
  if (altNames.length > 0) {
    extensions.push({ name: 'extKeyUsage', serverAuth: true });
    extensions.push({ name: 'subjectAltName', altNames });
  }
  extensions.push({ name: 'subjectKeyIdentifier' });
  cert.setExtensions(extensions);
  const signer = opts.issuer ? forge.pki.privateKeyFromPem(opts.issuer.keyPem) : key;
  cert.sign(signer, forge.md.sha256.create());
  const certPem = forge.pki.certificateToPem(cert);
  const certDer = Buffer.from(
    forge.asn1.toDer(forge.pki.certificateToAsn1(cert)).getBytes(),
    'binary',
  );
  return { keyPem, certPem, certDer };
}

/** A test CA and a server certificate it signed for 127.0.0.1 and localhost. */
export function makeServerTls(): { ca: KeyAndCert; server: KeyAndCert } {
  const ca = makeCertificate({ commonName: 'Ferry test CA', isCA: true });
  const server = makeCertificate({
    commonName: '127.0.0.1',
    issuer: ca,
    dnsNames: ['localhost'],
    ipAddresses: ['127.0.0.1'],
  });
  return { ca, server };
}

/**
 * The libtrust key ID docker-registry uses for a public key: SHA-256 of the DER
 * SubjectPublicKeyInfo, first 240 bits, base32 (no padding), in 12 groups of 4
 * joined by ':'.
 */
export function libtrustKeyId(spkiDer: Buffer): string {
  const digest = createHash('sha256').update(spkiDer).digest().subarray(0, 30);
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0;
  let value = 0;
  let out = '';
  for (const byte of digest) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += alphabet[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  return out.match(/.{4}/g)!.join(':');
}
