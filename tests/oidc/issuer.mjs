#!/usr/bin/env node
// Test-only OpenID Connect issuer for Prism, built on oidc-provider (panva).
//
//   node tests/oidc/issuer.mjs --port P --keys FILE [--rotate [--retire]] [--access-ttl SECONDS]
//                              [--stdin-lifeline] [--verbose]
//
// stdout carries exactly one line (the JSON "ready" line); everything else goes to stderr.
// See README.md in this directory for the full contract.
//
// NEVER use this outside tests: static client secrets, development interactions (any password
// is accepted), in-memory storage.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { parseArgs } from 'node:util';

// oidc-provider prints NOTICE lines with console.info (stdout). Keep stdout reserved for the
// ready line: everything logged through console goes to stderr. This must happen before
// oidc-provider is loaded, hence the dynamic imports below.
const toStderr = (...args) => console.error(...args);
console.log = toStderr;
console.info = toStderr;
console.debug = toStderr;

const { default: Provider, errors, interactionPolicy } = await import('oidc-provider');
const jose = await import('jose');

// ---------------------------------------------------------------------------------------------
// Static test data
// ---------------------------------------------------------------------------------------------

/** Resource indicator (RFC 8707) for Prism. Must be an absolute URI, hence the `urn:` form. */
export const PRISM_RESOURCE = 'urn:prism';
/** `aud` claim of access tokens issued for PRISM_RESOURCE. */
export const PRISM_AUDIENCE = 'prism';
/** A second resource server so tests can obtain a real, validly signed, wrong-audience token. */
export const OTHER_RESOURCE = 'urn:not-prism';
export const OTHER_AUDIENCE = 'not-prism';

/** End-user accounts (login name == account id == `sub`). */
const ACCOUNTS = {
  'dev@local.prism': { namespaces: ['*'], name: 'Prism Developer' },
  'reader@local.prism': { namespaces: ['orders:read'], name: 'Orders Reader' },
  'orders@local.prism': { namespaces: ['orders'], name: 'Orders Owner' },
};

const DEVICE_CODE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';
const TEST_CLIENT_SECRET = 'secret';

function testClient(clientId, namespaces) {
  return {
    client_id: clientId,
    client_secret: TEST_CLIENT_SECRET,
    client_name: clientId,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    // Both client_secret_basic and client_secret_post are accepted by oidc-provider for a client
    // registered with either of the two.
    token_endpoint_auth_method: 'client_secret_basic',
    prism_namespaces: namespaces,
  };
}

const CLIENTS = [
  {
    client_id: 'prism-cli',
    client_name: 'Prism CLI',
    application_type: 'native',
    token_endpoint_auth_method: 'none',
    grant_types: [DEVICE_CODE_GRANT, 'refresh_token'],
    response_types: [],
    redirect_uris: [],
    scope: 'openid offline_access',
  },
  testClient('prism-test-all', ['*']),
  testClient('prism-test-orders', ['orders']),
  testClient('prism-test-orders-read', ['orders:read']),
  testClient('prism-test-none', []),
  testClient('prism-test-admin', ['*:admin']),
];

const ROUTES = {
  authorization: '/auth',
  code_verification: '/device',
  device_authorization: '/device/auth',
  end_session: '/session/end',
  introspection: '/token/introspection',
  jwks: '/jwks',
  revocation: '/token/revocation',
  token: '/token',
  userinfo: '/me',
};

// ---------------------------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------------------------

function usage(msg) {
  if (msg) console.error(`issuer.mjs: ${msg}`);
  console.error('usage: node issuer.mjs --port P --keys FILE [--rotate [--retire]] [--access-ttl SECONDS] [--stdin-lifeline] [--verbose]');
  process.exit(2);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      port: { type: 'string' },
      keys: { type: 'string' },
      rotate: { type: 'boolean', default: false },
      retire: { type: 'boolean', default: false },
      'access-ttl': { type: 'string' },
      'stdin-lifeline': { type: 'boolean', default: false },
      verbose: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  }));
} catch (err) {
  usage(err.message);
}
if (args.help) usage();
if (args.port === undefined) usage('--port is required (use 0 to pick a free port)');
if (!args.keys) usage('--keys is required');

const requestedPort = Number(args.port);
if (!Number.isInteger(requestedPort) || requestedPort < 0 || requestedPort > 65535) {
  usage(`invalid --port ${args.port}`);
}
let accessTtl = 300;
if (args['access-ttl'] !== undefined) {
  accessTtl = Number(args['access-ttl']);
  if (!Number.isInteger(accessTtl) || accessTtl <= 0) usage(`invalid --access-ttl ${args['access-ttl']}`);
}
const keysFile = path.resolve(args.keys);

// ---------------------------------------------------------------------------------------------
// Signing keys
// ---------------------------------------------------------------------------------------------

async function newSigningKey(alg) {
  const opts = alg === 'RS256' ? { modulusLength: 2048, extractable: true } : { extractable: true };
  const { privateKey } = await jose.generateKeyPair(alg, opts);
  const jwk = await jose.exportJWK(privateKey);
  const thumbprint = await jose.calculateJwkThumbprint(jwk, 'sha256');
  return {
    ...jwk, kid: `${alg.toLowerCase()}-${thumbprint.slice(0, 22)}`, alg, use: 'sig',
  };
}

function writePrivateJson(file, value) {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, `${JSON.stringify(value, null, 2)}\n`, { mode: 0o600 });
  fs.chmodSync(tmp, 0o600);
  fs.renameSync(tmp, file);
}

/**
 * Sidecar `<FILE>.pem.json`: the same keys, same order, as PEM ({"keys": [{kid, alg, kty,
 * private_pem (PKCS#8), public_pem (SPKI)}]}), for Rust crates that can't load private JWKs
 * (jsonwebtoken's EncodingKey::from_rsa_pem / from_ec_pem, ring's *KeyPair::from_pkcs8). Rewritten
 * on every start; the JWKS file stays the source of truth.
 */
function writePemSidecar(file, jwks) {
  const keys = [];
  for (const jwk of jwks.keys) {
    const privateKey = crypto.createPrivateKey({ key: jwk, format: 'jwk' });
    keys.push({
      kid: jwk.kid,
      alg: jwk.alg,
      kty: jwk.kty,
      private_pem: privateKey.export({ type: 'pkcs8', format: 'pem' }),
      public_pem: crypto.createPublicKey(privateKey).export({ type: 'spki', format: 'pem' }),
    });
  }
  writePrivateJson(`${file}.pem.json`, { keys });
}

function validateKeys(jwks, file) {
  if (!jwks || !Array.isArray(jwks.keys) || jwks.keys.length === 0) {
    throw new Error(`${file}: expected a JWKS object {"keys": [...]} with at least one key`);
  }
  for (const k of jwks.keys) {
    if (!k.kid || !k.alg || !k.kty) throw new Error(`${file}: every key needs kid, alg and kty`);
    if (!k.d) throw new Error(`${file}: key ${k.kid} is not a private key`);
  }
  if (!jwks.keys.some((k) => k.alg === 'RS256')) {
    throw new Error(`${file}: at least one RS256 key is required`);
  }
}

async function loadOrCreateKeys(file, rotate, retire) {
  let jwks;
  let dirty = false;
  if (fs.existsSync(file)) {
    jwks = JSON.parse(fs.readFileSync(file, 'utf8'));
    validateKeys(jwks, file);
    console.error(`issuer: loaded ${jwks.keys.length} key(s) from ${file}`);
  } else {
    jwks = { keys: [await newSigningKey('RS256'), await newSigningKey('ES256')] };
    dirty = true;
    console.error(`issuer: generated a new key set in ${file}`);
  }
  if (rotate) {
    const fresh = await newSigningKey('RS256');
    // --retire: the old RS256 keys are no longer published (a key the
    // issuer removed must stop working at Prism too).
    const kept = retire ? jwks.keys.filter((k) => k.alg !== 'RS256') : jwks.keys;
    jwks.keys = [fresh, ...kept];
    dirty = true;
    console.error(`issuer: rotated: new RS256 signing key ${fresh.kid}`);
  }
  if (dirty) writePrivateJson(file, jwks);
  writePemSidecar(file, jwks);
  return jwks;
}

// ---------------------------------------------------------------------------------------------
// Provider
// ---------------------------------------------------------------------------------------------

function resourceServerInfo(resource) {
  const common = {
    accessTokenTTL: accessTtl,
    accessTokenFormat: 'jwt',
    jwt: { sign: { alg: 'RS256' } },
  };
  switch (resource) {
    case PRISM_RESOURCE:
      return { ...common, scope: 'prism', audience: PRISM_AUDIENCE };
    case OTHER_RESOURCE:
      return { ...common, scope: 'other', audience: OTHER_AUDIENCE };
    default:
      throw new errors.InvalidTarget(`unknown resource indicator; use ${PRISM_RESOURCE}`);
  }
}

function interactionPolicyWithAccountCheck() {
  const { base, Check } = interactionPolicy;
  const policy = base();
  // devInteractions accept any login name; send the user back to the login form when the name is
  // not one of ACCOUNTS instead of failing late at the token endpoint.
  policy.get('login').checks.add(new Check(
    'unknown_account',
    'the login is not a known test account',
    (ctx) => (ctx.oidc.session.accountId && !ctx.oidc.account
      ? Check.REQUEST_PROMPT : Check.NO_NEED_TO_PROMPT),
  ));
  return policy;
}

function buildProvider(issuer, jwks) {
  const configuration = {
    clients: CLIENTS,
    jwks,
    routes: ROUTES,
    cookies: {
      keys: ['prism-test-oidc-issuer-cookie-key'],
    },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
    },
    scopes: ['openid', 'offline_access', 'email', 'profile'],
    extraClientMetadata: {
      properties: ['prism_namespaces'],
      validator(ctx, key, value) {
        if (key !== 'prism_namespaces' || value === undefined) return;
        if (!Array.isArray(value) || !value.every((v) => typeof v === 'string')) {
          throw new errors.InvalidClientMetadata('prism_namespaces must be an array of strings');
        }
      },
    },
    async findAccount(ctx, sub) {
      const account = ACCOUNTS[sub];
      if (!account) return undefined;
      return {
        accountId: sub,
        async claims() {
          return {
            sub, email: sub, email_verified: true, name: account.name,
          };
        },
      };
    },
    async extraTokenClaims(ctx, token) {
      // Called for every access token (device code, refresh, client credentials). For `jwt`
      // format tokens the returned object becomes top-level claims (they can't override the
      // standard ones).
      if (token.accountId) {
        const account = ACCOUNTS[token.accountId];
        return { prism_namespaces: account ? [...account.namespaces] : [] };
      }
      const client = token.client ?? ctx.oidc.client
        ?? await ctx.oidc.provider.Client.find(token.clientId);
      return { prism_namespaces: [...(client?.prism_namespaces ?? [])] };
    },
    features: {
      devInteractions: { enabled: true },
      clientCredentials: { enabled: true },
      deviceFlow: { enabled: true, charset: 'base-20', mask: '****-****' },
      revocation: { enabled: true },
      introspection: { enabled: false },
      userinfo: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // No `resource` parameter => Prism. Passing resource=urn:prism explicitly is equivalent.
        async defaultResource(ctx, client, oneOf) {
          if (oneOf) return oneOf.includes(PRISM_RESOURCE) ? PRISM_RESOURCE : oneOf;
          return PRISM_RESOURCE;
        },
        // Device code / refresh token exchanges return a token for the granted resource even
        // though `openid` is in scope (otherwise an opaque userinfo token would be issued).
        async useGrantedResource() {
          return true;
        },
        async getResourceServerInfo(ctx, resource) {
          return resourceServerInfo(resource);
        },
      },
    },
    interactions: { policy: interactionPolicyWithAccountCheck() },
    pkce: { required: () => true },
    async issueRefreshToken(ctx, client, code) {
      return client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access');
    },
    // Public client refresh tokens are rotated on every use (the old one becomes invalid).
    rotateRefreshToken: true,
    ttl: {
      AccessToken: () => accessTtl,
      ClientCredentials: () => accessTtl,
      AuthorizationCode: 60,
      DeviceCode: 600,
      IdToken: 3600,
      RefreshToken: 14 * 24 * 3600,
      Interaction: 3600,
      Session: 14 * 24 * 3600,
      Grant: 14 * 24 * 3600,
    },
    renderError(ctx, out) {
      ctx.type = 'html';
      const rows = Object.entries(out)
        .map(([k, v]) => `<pre><strong>${k}</strong>: ${String(v).replace(/[<>&"]/g, (c) => `&#${c.charCodeAt(0)};`)}</pre>`)
        .join('');
      ctx.body = `<!DOCTYPE html><html><head><title>oidc error</title></head><body><h1>oops! something went wrong</h1>${rows}</body></html>`;
    },
  };

  const provider = new Provider(issuer, configuration);

  const logError = (event) => (ctx, err) => {
    const e = err ?? ctx;
    console.error(`issuer: ${event}: ${e?.name ?? ''} ${e?.message ?? e}${e?.error_description ? ` (${e.error_description})` : ''}`);
  };
  for (const event of ['server_error', 'grant.error', 'authorization.error', 'device_authorization.error',
    'code_verification.error', 'jwks.error', 'discovery.error', 'revocation.error', 'userinfo.error']) {
    provider.on(event, logError(event));
  }
  return provider;
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

let handler = (req, res) => {
  res.statusCode = 503;
  res.end('starting');
};
const server = http.createServer((req, res) => {
  if (args.verbose) {
    res.on('finish', () => console.error(`issuer: ${req.method} ${req.url} -> ${res.statusCode}`));
  }
  handler(req, res);
});

function shutdown(signal) {
  console.error(`issuer: ${signal}, shutting down`);
  server.close();
  server.closeAllConnections?.();
  process.exit(0);
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

try {
  // Bind first: if the port is taken, fail before touching the keys file (no half-done rotation).
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(requestedPort, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });

  const jwks = await loadOrCreateKeys(keysFile, args.rotate, args.retire);

  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = buildProvider(issuer, jwks);
  handler = provider.callback();

  console.error(`issuer: ${issuer} signing with kid ${jwks.keys.find((k) => k.alg === 'RS256').kid}; access token ttl ${accessTtl}s`);

  if (args['stdin-lifeline']) {
    // Exit when the parent closes our stdin (or dies), so a crashed test run leaves no orphan.
    process.stdin.on('end', () => shutdown('stdin closed'));
    process.stdin.on('error', () => shutdown('stdin error'));
    process.stdin.resume();
  }

  process.stdout.write(`${JSON.stringify({
    issuer,
    jwks_uri: `${issuer}${ROUTES.jwks}`,
    token_endpoint: `${issuer}${ROUTES.token}`,
    device_authorization_endpoint: `${issuer}${ROUTES.device_authorization}`,
  })}\n`);
} catch (err) {
  console.error(`issuer: failed to start: ${err?.code ? `${err.code} ` : ''}${err?.stack ?? err}`);
  process.exit(1);
}
