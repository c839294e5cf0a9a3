// Starts oauth2-mock-server, a third-party OAuth 2.0 authorization server, on a
// free loopback port for the Portcullis end-to-end tests. It prints
// "READY <issuer-url>" once it serves discovery, JWKS and the token endpoint, and
// stops when its standard input closes (so a dying test never leaves it behind).
import { OAuth2Server } from 'oauth2-mock-server';

const server = new OAuth2Server();
await server.issuer.keys.generate('RS256');
server.service.on('beforeTokenSigning', (token) => {
  token.payload.aud = 'portcullis-e2e';
});
await server.start(0, '127.0.0.1');
console.log(`READY ${server.issuer.url}`);
process.stdin.resume();
process.stdin.on('end', async () => {
  await server.stop();
  process.exit(0);
});
