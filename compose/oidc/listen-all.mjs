// Preloaded into the test issuer (node --import) in the compose stack.
//
// tests/oidc/issuer.mjs listens on 127.0.0.1 only and names itself
// http://127.0.0.1:<port>. In compose it shares Prism's network namespace, so
// Prism reaches it on 127.0.0.1; this makes it listen on every interface of
// that namespace too, so the port compose publishes (bound to the host's
// 127.0.0.1) reaches it and the issuer URL is the same from your browser.
// The issuer itself is unchanged. Test use only: any password logs in.
import net from 'node:net';

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function listenOnAllInterfaces(...args) {
  if (args[1] === '127.0.0.1') args[1] = '0.0.0.0';
  return listen.apply(this, args);
};
