// A real OpenID Connect provider (oidc-provider) for sandgate's tests.
//
// Listens on 127.0.0.1 only and prints one line, `IDP_READY http://127.0.0.1:<port>`, once
// it accepts connections; that URL (no trailing slash) is the issuer. Everything else it
// says goes to stderr. Its login and consent pages are oidc-provider's development
// interactions: any login name with any password signs in, and the login name is the
// account id. tests/python/idp_flows.py drives these pages without a browser.
//
// Environment:
//   IDP_PORT              port to listen on (0 or unset: a free one)
//   IDP_RESOURCE          resource indicator (RFC 8707) of the protected API; access tokens
//                         for it are RS256 JWTs with aud = this value (required)
//   IDP_EXTRA_RESOURCES   more accepted resource indicators, comma separated
//   IDP_RESOURCE_SCOPES   scopes an access token for a resource may carry, space separated
//                         (default: openid email profile groups offline_access)
//   IDP_DEFAULT_SCOPE     scope of a GET authorization request that has none
//                         (default: openid email groups)
//   IDP_CONSOLE_SECRET    client secret of sandgate-console (default: console-secret)
//   IDP_CONSOLE_REDIRECTS redirect_uris of sandgate-console, comma separated
//   IDP_CONSOLE_POST_LOGOUT post_logout_redirect_uris of sandgate-console, comma separated
//                         (default: the root URL of each of its redirect_uris)
//   IDP_SDK_REDIRECTS     redirect_uris of sdk-client (default: http://127.0.0.1/sdk-callback)
//   IDP_GROUPS_FILE       JSON object login -> [group, ...], read again for every token
//   IDP_ACCESS_TTL        access token lifetime in seconds (default: 300)
//   IDP_AUTO_CONSENT      "0" to show the consent page; by default consent is granted
//   IDP_JWKS_OUT          file to write the public JWKS to

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';

// oidc-provider prints notices about its development defaults with console.info (stdout)
// and console.warn; keep stdout for the ready line and drop the expected notices.
const EXPECTED_NOTICES = [
  'oidc-provider NOTICE',
  'oidc-provider WARNING: a quick start development-only',
  'oidc-provider WARNING: Unsupported runtime',
];
for (const name of ['log', 'info', 'warn']) {
  console[name] = (...args) => {
    const text = args.map(String).join(' ');
    if (!EXPECTED_NOTICES.some((prefix) => text.includes(prefix))) {
      process.stderr.write(`${text}\n`);
    }
  };
}

const { default: Provider, errors, interactionPolicy } = await import('oidc-provider');

const env = process.env;
const list = (value) => (value || '').split(',').map((s) => s.trim()).filter(Boolean);

const RESOURCE = env.IDP_RESOURCE;
if (!RESOURCE) {
  process.stderr.write('server.mjs: IDP_RESOURCE must be set\n');
  process.exit(2);
}
const RESOURCES = new Set([RESOURCE, ...list(env.IDP_EXTRA_RESOURCES)]);
const RESOURCE_SCOPES = env.IDP_RESOURCE_SCOPES || 'openid email profile groups offline_access';
const ACCESS_TTL = Number(env.IDP_ACCESS_TTL || 300);
const AUTO_CONSENT = env.IDP_AUTO_CONSENT !== '0';
const DEFAULT_SCOPE = env.IDP_DEFAULT_SCOPE || 'openid email groups';
const DEFAULT_GROUPS = ['eng-platform'];

// Signing key: a fresh RSA key each run, with its RFC 7638 thumbprint as kid.
function signingJwk() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  const canonical = JSON.stringify({ e: jwk.e, kty: jwk.kty, n: jwk.n });
  const kid = crypto.createHash('sha256').update(canonical).digest('base64url');
  return { ...jwk, kid, alg: 'RS256', use: 'sig' };
}
const jwk = signingJwk();
if (env.IDP_JWKS_OUT) {
  const { kty, n, e, kid, alg, use } = jwk;
  fs.writeFileSync(env.IDP_JWKS_OUT, JSON.stringify({ keys: [{ kty, n, e, kid, alg, use }] }));
}

// Groups of a login, read from IDP_GROUPS_FILE on every call so tests can change them.
function groupsOf(login) {
  if (!env.IDP_GROUPS_FILE) return DEFAULT_GROUPS;
  let table;
  try {
    table = JSON.parse(fs.readFileSync(env.IDP_GROUPS_FILE, 'utf8'));
  } catch (err) {
    if (err.code !== 'ENOENT') process.stderr.write(`IDP_GROUPS_FILE: ${err.message}\n`);
    return DEFAULT_GROUPS;
  }
  return Array.isArray(table?.[login]) ? table[login] : DEFAULT_GROUPS;
}

// Any login name is an account: sub = login, email = login@example.com (the login itself
// when it already is an address), groups from the groups file.
function userClaims(login) {
  return {
    sub: login,
    email: login.includes('@') ? login : `${login}@example.com`,
    email_verified: true,
    name: login,
    groups: groupsOf(login),
  };
}

async function findAccount(_ctx, id) {
  if (!id) return undefined;
  return { accountId: id, claims: async () => userClaims(id) };
}

// With auto consent, every client (static or registered) is treated as first party: the
// grant is created or extended with whatever the request asked for, so a login is a
// single form post and no consent page is shown.
async function loadExistingGrant(ctx) {
  const { oidc } = ctx;
  const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
  let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
  if (!AUTO_CONSENT) return grant;
  grant ||= new oidc.provider.Grant({
    clientId: oidc.client.clientId,
    accountId: oidc.account.accountId,
  });
  const oidcScopes = [...oidc.requestParamOIDCScopes];
  if (oidcScopes.length) grant.addOIDCScope(oidcScopes.join(' '));
  const claims = [...oidc.requestParamClaims];
  if (claims.length) grant.addOIDCClaims(claims);
  for (const [indicator, server] of Object.entries(oidc.resourceServers)) {
    const scopes = [...oidc.requestParamScopes].filter((s) => server.scopes.has(s));
    if (scopes.length) grant.addResourceScope(indicator, scopes.join(' '));
  }
  await grant.save();
  return grant;
}

const policy = interactionPolicy.base();
if (AUTO_CONSENT) {
  // Native clients are otherwise always sent to the consent page.
  policy.get('consent').checks.remove('native_client_prompt');
}

// Plain pages for the device flow, logout and errors (the built-in ones pull a web font).
const page = (title, body) => `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${title}</title></head><body><h1>${title}</h1>${body}</body></html>`;
const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

const clients = [
  {
    client_id: 'sandgate-console',
    client_secret: env.IDP_CONSOLE_SECRET || 'console-secret',
    client_name: 'sandgate console',
    token_endpoint_auth_method: 'client_secret_basic', // client_secret_post works too
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: list(env.IDP_CONSOLE_REDIRECTS),
    post_logout_redirect_uris: env.IDP_CONSOLE_POST_LOGOUT
      ? list(env.IDP_CONSOLE_POST_LOGOUT)
      : list(env.IDP_CONSOLE_REDIRECTS).map((u) => new URL('/', u).href),
  },
  {
    // Native: a loopback redirect_uri matches on any port.
    client_id: 'sandgate-cli',
    client_name: 'sandgate CLI',
    application_type: 'native',
    token_endpoint_auth_method: 'none',
    grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
    response_types: ['code'],
    redirect_uris: ['http://127.0.0.1/callback', 'http://localhost/callback'],
  },
  {
    // Confidential, and native too so that its loopback redirect_uri matches on any port.
    client_id: 'sdk-client',
    client_secret: 'sdk-secret',
    client_name: 'SDK client',
    application_type: 'native',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
    response_types: ['code'],
    redirect_uris: list(env.IDP_SDK_REDIRECTS || 'http://127.0.0.1/sdk-callback'),
  },
].filter((c) => c.redirect_uris.length);

const configuration = {
  clients,
  findAccount,
  loadExistingGrant,
  interactions: { policy },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
    profile: ['name'],
  },
  cookies: {
    keys: ['sandgate-test-idp-cookie-key-1', 'sandgate-test-idp-cookie-key-2'],
  },
  jwks: { keys: [jwk] },
  responseTypes: ['code'],
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: true },
    registration: { enabled: true, initialAccessToken: false },
    clientCredentials: { enabled: true },
    revocation: { enabled: true },
    deviceFlow: {
      enabled: true,
      userCodeInputSource: async (ctx, form, _out, err) => {
        const msg = err ? '<p class="error">The code was not accepted.</p>' : '<p>Enter the code displayed on your device</p>';
        ctx.body = page('Sign-in', `${msg}${form}<button type="submit" form="op.deviceInputForm">Continue</button>`);
      },
      userCodeConfirmSource: async (ctx, form, client, _deviceInfo, userCode) => {
        ctx.body = page('Confirm Device', `<p>${escape(client.clientName || client.clientId)}: <code>${escape(userCode)}</code></p>${form}<button type="submit" form="op.deviceConfirmForm">Continue</button>`);
      },
      successSource: async (ctx) => {
        ctx.body = page('Sign-in Success', '<p>You can close this page.</p>');
      },
    },
    rpInitiatedLogout: {
      enabled: true,
      logoutSource: async (ctx, form) => {
        ctx.body = page('Sign out', `${form}<button type="submit" form="op.logoutForm" value="yes" name="logout">Sign out</button>`);
      },
      postLogoutSuccessSource: async (ctx) => {
        ctx.body = page('Signed out', '');
      },
    },
    resourceIndicators: {
      enabled: true,
      // No `resource` in the request: the API's; several granted ones: the API's if present.
      defaultResource: async (_ctx, _client, oneOf) => {
        if (oneOf) return oneOf.includes(RESOURCE) ? RESOURCE : oneOf[0];
        return RESOURCE;
      },
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, indicator) => {
        if (!RESOURCES.has(indicator)) throw new errors.InvalidTarget();
        return {
          scope: RESOURCE_SCOPES,
          audience: indicator,
          accessTokenTTL: ACCESS_TTL,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  // The user's claims go into every access token issued for a user.
  extraTokenClaims: async (_ctx, token) => {
    if (!token.accountId) return undefined;
    const { email, groups, name } = userClaims(token.accountId);
    return { email, groups, name };
  },
  // Refresh tokens for every client allowed the refresh_token grant, with or without
  // offline_access (which oidc-provider otherwise keeps only with prompt=consent).
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    ctx.body = page('Error', Object.entries(out).map(([k, v]) => `<pre>${escape(k)}: ${escape(v)}</pre>`).join(''));
  },
  ttl: {
    AccessToken: ACCESS_TTL,
    AuthorizationCode: 60,
    ClientCredentials: ACCESS_TTL,
    DeviceCode: 600,
    Grant: 86400,
    IdToken: 3600,
    Interaction: 3600,
    RefreshToken: 86400,
    Session: 86400,
  },
  // Never fetch anything (jwks_uri, sector_identifier_uri, request_uri).
  fetch: async (url) => {
    throw new Error(`outgoing request refused: ${url}`);
  },
};

const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(Number(env.IDP_PORT || 0), '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, configuration);
provider.proxy = false;
provider.on('server_error', (_ctx, err) => process.stderr.write(`server_error: ${err?.stack || err}\n`));

provider.use(async (ctx, next) => {
  // RFC 8414 metadata, which OAuth clients (MCP SDKs among them) look for first.
  if (ctx.path === '/.well-known/oauth-authorization-server') ctx.path = '/.well-known/openid-configuration';
  // An authorization request without scope would end in access_denied: give it the default.
  if (ctx.method === 'GET' && ctx.path === '/auth' && !ctx.query.scope && !ctx.query.request_uri) {
    ctx.query = { ...ctx.query, scope: DEFAULT_SCOPE };
  }
  await next();
  // The development login pages import a web font; keep browsers on this host.
  if (typeof ctx.body === 'string' && ctx.response.is('html')) {
    ctx.body = ctx.body.replace(/@import url\(https?:[^)]*\);?/g, '');
  }
});

server.on('request', provider.callback());
process.stdout.write(`IDP_READY ${issuer}\n`);

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    server.close();
    process.exit(0);
  });
}
