// Receiver-side check of a walhook delivery shaped as an Evomi custom webhook, used by
// tests/it/options.rs.
//
// `verifyWebhook` below is copied verbatim from the Evomi webhook document (shared seed 004,
// "Verification Example (Node.js)"). As in the document's Express app, `req.body` is the parsed
// JSON body: the document's code signs JSON.stringify of it, so it accepts a body only when that
// body is already in JSON.stringify's form (compact; no number like 99.50).
//
// Input on stdin (JSON): {"body_b64": ..., "headers": {lower-case name: value}, "secret": ...}.
// Output: "true" or "false", then the parsed event's `event` field.

// ---- verbatim from the Evomi document ----
const crypto = require('crypto');

function verifyWebhook(req, secret) {
  const signature = req.headers['x-evomi-signature'];
  const payload = JSON.stringify(req.body);

  const expectedSignature = 'sha256=' +
    crypto.createHmac('sha256', secret)
      .update(payload)
      .digest('hex');

  return signature === expectedSignature;
}
// ---- end verbatim ----

let input = '';
process.stdin.on('data', (c) => { input += c; });
process.stdin.on('end', () => {
  const c = JSON.parse(input);
  const raw = Buffer.from(c.body_b64, 'base64').toString('utf8');
  const req = { headers: c.headers, body: JSON.parse(raw) };
  console.log(verifyWebhook(req, c.secret) ? 'true' : 'false');
  console.log(req.body.event);
});
