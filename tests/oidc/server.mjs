// A certified OpenID provider (npm oidc-provider) on loopback, for asynctoken's tests.
//
// Usage: node server.mjs CONFIG.json
// CONFIG holds the clients (metadata with public keys), the TLS material for the mutual-TLS
// listener, the access-token lifetime and the DPoP nonce secret. When both listeners are up the
// server prints one JSON line ({"issuer": ..., "tls": ...}) and serves until stdin closes (the
// test process went away) or it receives SIGTERM.
//
// Besides the provider's own endpoints (the issuer is the plain listener; the TLS listener
// serves the same provider for mutual-TLS clients), it has:
//   POST /__test/seed    {"client_id": ...} -> {"refresh_token": ...}: a grant and a refresh
//                        token for that client, as an authorization-code flow would leave them.
//   GET  /__test/stats   counts per client: token requests (by outcome) and resource calls.
//   GET  /__test/times   per client, the unix times of the successful token requests.
//   GET|POST /resource   a protected resource: verifies the access token, and for bound tokens
//                        the DPoP proof (typ, signature, htm, htu, iat, jti, ath, jkt) or the
//                        client certificate (x5t#S256).
//   /resource-nonce      the same, and the proof must carry a nonce this resource issued.
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';

import { calculateJwkThumbprint, EmbeddedJWK, jwtVerify } from 'jose';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const DPOP_ALGS = ['ES256', 'PS256', 'RS256', 'EdDSA'];
const PROOF_WINDOW = 60; // seconds a proof's iat may differ from the clock

const stats = {};
const times = {}; // client id -> unix times of successful token requests
function count(clientId, name) {
  const entry = stats[clientId ?? '-'] ??= {};
  entry[name] = (entry[name] ?? 0) + 1;
}

function peerCertificate(ctx) {
  const socket = ctx.socket;
  if (typeof socket.getPeerX509Certificate !== 'function') return undefined;
  return socket.getPeerX509Certificate() ?? undefined;
}

function thumbprint(cert) {
  return createHash('sha256').update(cert.raw).digest('base64url');
}

// --- the resource server -------------------------------------------------------------------

const seenProofs = new Map(); // jti -> iat, pruned past the window
let resourceNonces = [randomBytes(16).toString('base64url')];
setInterval(() => {
  resourceNonces = [randomBytes(16).toString('base64url'), resourceNonces[0]];
}, 30_000).unref();

class Rejection extends Error {
  constructor(scheme, error, description, nonce) {
    super(description);
    this.scheme = scheme;
    this.error = error;
    this.nonce = nonce;
  }
}

async function verifyProof(ctx, accessToken, token, requireNonce) {
  const proof = ctx.get('DPoP');
  if (!proof) throw new Rejection('DPoP', 'invalid_token', 'DPoP proof missing');
  let payload;
  let protectedHeader;
  try {
    ({ payload, protectedHeader } = await jwtVerify(proof, EmbeddedJWK, {
      typ: 'dpop+jwt',
      algorithms: DPOP_ALGS,
    }));
  } catch (err) {
    throw new Rejection('DPoP', 'invalid_dpop_proof', `bad proof: ${err.code ?? err.message}`);
  }
  const now = Math.floor(Date.now() / 1000);
  if (typeof payload.iat !== 'number' || Math.abs(now - payload.iat) > PROOF_WINDOW) {
    throw new Rejection('DPoP', 'invalid_dpop_proof', 'iat missing or not recent');
  }
  if (typeof payload.jti !== 'string' || !payload.jti) {
    throw new Rejection('DPoP', 'invalid_dpop_proof', 'jti missing');
  }
  if (payload.htm !== ctx.method) throw new Rejection('DPoP', 'invalid_dpop_proof', 'htm mismatch');
  const expected = `${ctx.protocol}://${ctx.host}${ctx.path}`;
  if (payload.htu !== expected) {
    throw new Rejection('DPoP', 'invalid_dpop_proof', `htu mismatch: ${payload.htu} != ${expected}`);
  }
  const ath = createHash('sha256').update(accessToken).digest('base64url');
  if (payload.ath !== ath) throw new Rejection('DPoP', 'invalid_dpop_proof', 'ath mismatch');
  if (await calculateJwkThumbprint(protectedHeader.jwk) !== token.jkt) {
    throw new Rejection('DPoP', 'invalid_token', 'proof key is not the key the token is bound to');
  }
  if (requireNonce && !resourceNonces.includes(payload.nonce)) {
    throw new Rejection('DPoP', 'use_dpop_nonce', 'resource server requires a nonce', resourceNonces[0]);
  }
  for (const [jti, iat] of seenProofs) {
    if (iat < now - 2 * PROOF_WINDOW) seenProofs.delete(jti);
  }
  if (seenProofs.has(payload.jti)) throw new Rejection('DPoP', 'invalid_dpop_proof', 'proof replayed');
  seenProofs.set(payload.jti, payload.iat);
}

async function resource(provider, ctx) {
  const authorization = ctx.get('Authorization');
  const match = /^(Bearer|DPoP) ([!-~]+)$/i.exec(authorization);
  let clientId;
  try {
    if (!match) throw new Rejection('Bearer', 'invalid_request', 'no access token');
    const scheme = match[1].toLowerCase() === 'dpop' ? 'DPoP' : 'Bearer';
    const value = match[2];
    const token = (await provider.AccessToken.find(value))
      ?? (await provider.ClientCredentials.find(value));
    if (!token || token.isExpired) {
      throw new Rejection(scheme, 'invalid_token', 'access token unknown or expired');
    }
    clientId = token.clientId;
    if (token.jkt) {
      if (scheme !== 'DPoP') throw new Rejection('DPoP', 'invalid_token', 'DPoP-bound token sent as Bearer');
      await verifyProof(ctx, value, token, ctx.path === '/resource-nonce');
    } else if (scheme === 'DPoP') {
      throw new Rejection('Bearer', 'invalid_token', 'token is not DPoP-bound');
    }
    if (token['x5t#S256']) {
      const cert = peerCertificate(ctx);
      if (!cert || thumbprint(cert) !== token['x5t#S256']) {
        throw new Rejection(scheme, 'invalid_token', 'client certificate missing or not the bound one');
      }
    }
    count(clientId, 'resource_ok');
    ctx.body = { client_id: clientId, bound: { jkt: !!token.jkt, x5t: !!token['x5t#S256'] } };
  } catch (err) {
    if (!(err instanceof Rejection)) throw err;
    count(clientId, `resource_${err.error}`);
    const params = `error="${err.error}", error_description="${err.message}"`;
    ctx.set('WWW-Authenticate', `${err.scheme} ${params}, algs="${DPOP_ALGS.join(' ')}"`);
    if (err.nonce) ctx.set('DPoP-Nonce', err.nonce);
    ctx.status = 401;
    ctx.body = { error: err.error };
  }
}

async function readJson(ctx) {
  const chunks = [];
  for await (const chunk of ctx.req) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
}

async function seed(provider, ctx) {
  const { client_id: clientId, scope = 'openid offline_access' } = await readJson(ctx);
  const client = await provider.Client.find(clientId);
  if (!client) ctx.throw(404, 'unknown client');
  const accountId = `account-${clientId}`;
  const grant = new provider.Grant({ accountId, clientId });
  grant.addOIDCScope(scope);
  const grantId = await grant.save();
  const refreshToken = new provider.RefreshToken({
    accountId,
    client,
    grantId,
    scope,
    gty: 'authorization_code',
    authTime: Math.floor(Date.now() / 1000),
  });
  ctx.body = { refresh_token: await refreshToken.save() };
}

// --- the provider ----------------------------------------------------------------------------

function listen(server) {
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve(server.address().port));
  });
}

let handler = (req, res) => { res.statusCode = 503; res.end(); };
const plain = http.createServer((req, res) => handler(req, res));
const tls = https.createServer({
  cert: readFileSync(config.tls.cert),
  key: readFileSync(config.tls.key),
  ca: [readFileSync(config.tls.ca)],
  requestCert: true,
  rejectUnauthorized: false, // self-signed client certificates are judged by the provider
}, (req, res) => handler(req, res));
const [plainPort, tlsPort] = await Promise.all([listen(plain), listen(tls)]);
const issuer = `http://127.0.0.1:${plainPort}`;
const ttl = config.access_token_ttl;

const provider = new Provider(issuer, {
  clients: config.clients,
  jwks: { keys: [config.signing_jwk] },
  findAccount: (ctx, sub) => ({ accountId: sub, claims: () => ({ sub }) }),
  scopes: ['openid', 'offline_access'],
  rotateRefreshToken: true,
  ttl: {
    AccessToken: ttl,
    ClientCredentials: ttl,
    RefreshToken: 3600,
    Grant: 3600,
    IdToken: 3600,
    Session: 3600,
    Interaction: 3600,
  },
  clientAuthMethods: [
    'none',
    'client_secret_basic',
    'client_secret_post',
    'client_secret_jwt',
    'private_key_jwt',
    'tls_client_auth',
    'self_signed_tls_client_auth',
  ],
  enabledJWA: {
    clientAuthSigningAlgValues: ['HS256', 'RS256', 'PS256', 'ES256', 'EdDSA'],
    dPoPSigningAlgValues: DPOP_ALGS,
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    dPoP: {
      enabled: true,
      nonceSecret: Buffer.from(config.dpop_nonce_secret, 'base64url'),
      // Clients whose id ends in "-nonce" must put a server nonce in their proofs.
      requireNonce: (ctx) => Boolean(ctx.oidc.client?.clientId.endsWith('-nonce')),
    },
    mTLS: {
      enabled: true,
      certificateBoundAccessTokens: true,
      tlsClientAuth: true,
      selfSignedTlsClientAuth: true,
      getCertificate: peerCertificate,
      certificateAuthorized: (ctx) => ctx.socket.authorized === true,
      certificateSubjectMatches: (ctx, property, expected) => {
        const cert = peerCertificate(ctx);
        return property === 'tls_client_auth_subject_dn' && cert?.subject === expected;
      },
    },
  },
});

provider.on('grant.success', (ctx) => {
  const clientId = ctx.oidc.client?.clientId;
  count(clientId, 'token_ok');
  (times[clientId] ??= []).push(Date.now() / 1000);
});
provider.on('grant.error', (ctx, err) => {
  count(ctx.oidc.client?.clientId, `token_${err.error ?? 'error'}`);
  if (process.env.OIDC_DEBUG) console.error('grant.error', err.error, err.error_description, err.cause);
});

provider.use(async (ctx, next) => {
  if (ctx.path === '/resource' || ctx.path === '/resource-nonce') return resource(provider, ctx);
  if (ctx.path === '/__test/seed' && ctx.method === 'POST') return seed(provider, ctx);
  if (ctx.path === '/__test/stats') {
    ctx.body = stats;
    return undefined;
  }
  if (ctx.path === '/__test/times') {
    ctx.body = times;
    return undefined;
  }
  return next();
});

// Load every client now: a registration the provider refuses fails the start, loudly.
for (const { client_id: clientId } of config.clients) {
  try {
    await provider.Client.find(clientId);
  } catch (err) {
    console.error(`client ${clientId}: ${err.message}: ${err.error_description}`);
    process.exit(1);
  }
}

handler = provider.callback();
process.stdout.write(`${JSON.stringify({ issuer, tls: `https://127.0.0.1:${tlsPort}` })}\n`);

function stop() {
  plain.close();
  tls.close();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.stdin.on('end', stop);
process.stdin.resume();
