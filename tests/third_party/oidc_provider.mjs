// Starts oidc-provider (npm), a certified OpenID Connect / OAuth 2.0
// authorization server, on a free loopback port for the Portcullis
// introspection tests (tests/introspection.rs) and the MCP SDK test.
//
// It issues OPAQUE access tokens (client credentials, RFC 8707 resource
// indicators), serves RFC 7662 introspection and RFC 7009 revocation, and
// authenticates the gateway as a client with client_secret_basic,
// client_secret_post or private_key_jwt. Clients:
//   gateway / gateway-secret         the gateway, client_secret_basic
//   gateway-post / gateway-secret    the gateway, client_secret_post
//   gateway-jwt                      the gateway, private_key_jwt (public JWK
//                                    from the GATEWAY_JWK environment variable)
//   app / app-secret                 an API client (client credentials,
//                                    client_secret_basic)
//   app-post / app-secret            the same, client_secret_post
//   agent-jwt                        the same, private_key_jwt (GATEWAY_JWK)
// Resources: any https://*.test/… or http://127.0.0.1:<port>/… URL is a
// resource server whose tokens are opaque and carry the resource as their
// audience; https://short.test/ tokens live 2 seconds.
//
// Test-only control, in front of the real endpoints (never in a product):
//   GET  /__test/calls           {"introspection": n} calls so far
//   POST /__test/mode?m=<mode>   how the introspection endpoint answers from
//                                now on: normal, http500, not_json, no_active,
//                                active_string, huge, slow; token_html makes
//                                the token endpoint answer an HTML page
//
// It prints "READY <issuer-url>" once it serves, and exits when its standard
// input closes (so a dying test never leaves it behind).
import http from 'node:http';
import Provider from 'oidc-provider';

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const gatewayJwk = process.env.GATEWAY_JWK ? JSON.parse(process.env.GATEWAY_JWK) : null;
const clients = [
  {
    client_id: 'gateway',
    client_secret: 'gateway-secret',
    grant_types: [],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
  },
  {
    client_id: 'gateway-post',
    client_secret: 'gateway-secret',
    grant_types: [],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_post',
  },
  {
    client_id: 'app',
    client_secret: 'app-secret',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'chat:write admin mcp',
    token_endpoint_auth_method: 'client_secret_basic',
  },
  {
    client_id: 'app-post',
    client_secret: 'app-secret',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'chat:write admin mcp',
    token_endpoint_auth_method: 'client_secret_post',
  },
];
if (gatewayJwk) {
  clients.push({
    client_id: 'agent-jwt',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'chat:write admin mcp',
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: gatewayJwk.alg,
    jwks: { keys: [gatewayJwk] },
  });
  clients.push({
    client_id: 'gateway-jwt',
    grant_types: [],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: gatewayJwk.alg,
    jwks: { keys: [gatewayJwk] },
  });
}

const provider = new Provider(issuer, {
  clients,
  scopes: ['openid', 'chat:write', 'admin', 'mcp'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'https://api.test/',
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        if (!/^(https:\/\/[a-z0-9.-]+\.test|http:\/\/127\.0\.0\.1:\d+)(\/|$)/.test(resource)) {
          throw new Error(`unknown resource ${resource}`);
        }
        return {
          scope: 'chat:write admin mcp',
          audience: resource,
          accessTokenFormat: 'opaque',
          accessTokenTTL: resource.startsWith('https://short.test/') ? 2 : 600,
        };
      },
    },
  },
});
provider.proxy = false;

let introspectionCalls = 0;
let mode = 'normal';
const introspectionPath = '/token/introspection';

provider.use(async (ctx, next) => {
  if (ctx.path === '/__test/calls') {
    ctx.body = { introspection: introspectionCalls };
    return;
  }
  if (ctx.path === '/__test/mode') {
    mode = ctx.query.m || 'normal';
    ctx.body = { mode };
    return;
  }
  if (ctx.path === '/token' && ctx.method === 'POST' && mode === 'token_html') {
    ctx.status = 200;
    ctx.type = 'text/html';
    ctx.body = '<html>sign in</html>';
    return;
  }
  if (ctx.path === introspectionPath && ctx.method === 'POST') {
    introspectionCalls += 1;
    switch (mode) {
      case 'http500':
        ctx.status = 500;
        ctx.body = 'internal error';
        return;
      case 'not_json':
        ctx.status = 200;
        ctx.type = 'text/html';
        ctx.body = '<html>login</html>';
        return;
      case 'no_active':
        ctx.body = { scope: 'chat:write', aud: 'https://api.test/' };
        return;
      case 'active_string':
        ctx.body = { active: 'true', scope: 'chat:write admin', aud: 'https://api.test/' };
        return;
      case 'huge':
        ctx.body = { active: true, filler: 'x'.repeat(200 * 1024) };
        return;
      case 'slow':
        await new Promise((resolve) => setTimeout(resolve, 5000));
        ctx.body = { active: true };
        return;
      default:
        break;
    }
  }
  await next();
});

server.on('request', provider.callback());
console.log(`READY ${issuer}`);
process.stdin.resume();
process.stdin.on('end', () => {
  server.close();
  process.exit(0);
});
