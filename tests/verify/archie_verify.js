// Receiver-side check of walhook's Archie signatures, used by tests/signatures.rs.
//
// `verifyWebhookSignature` below is copied verbatim from the Archie webhook document (shared
// seed 003, "Verifying signatures", Node.js).
//
// Input on stdin, one JSON object per line:
//   {"mode": "raw" | "stringify", "body_b64": <raw body, base64>, "signature": <header>, "secret": <secret>}
// mode "raw": the function gets the raw body bytes (what a receiver using express.raw() has).
// mode "stringify": the document's own handler: express.json() parses the body into req.body and
//   the handler verifies JSON.stringify(req.body). That re-serialises the JSON, so it only
//   matches when the body is already in JavaScript's canonical form.
// Output: one line per case: "true", "false", or "throw: <message>".
'use strict';

// ---- verbatim from the Archie document ----
const crypto = require('crypto');

function verifyWebhookSignature(payload, signature, secret) {
  const expected = crypto
    .createHmac('sha256', secret)
    .update(payload, 'utf8')
    .digest('hex');

  const sig = signature.replace('sha256=', '');
  return crypto.timingSafeEqual(
    Buffer.from(sig, 'hex'),
    Buffer.from(expected, 'hex')
  );
}
// ---- end verbatim ----

const input = require('fs').readFileSync(0, 'utf8');
for (const line of input.split('\n')) {
  if (line.trim() === '') continue;
  const c = JSON.parse(line);
  const raw = Buffer.from(c.body_b64, 'base64');
  let payload;
  if (c.mode === 'raw') {
    payload = raw;
  } else if (c.mode === 'stringify') {
    const reqBody = JSON.parse(raw.toString('utf8')); // what express.json() does
    payload = JSON.stringify(reqBody);
  } else {
    process.stdout.write(`throw: unknown mode ${c.mode}\n`);
    continue;
  }
  try {
    process.stdout.write(verifyWebhookSignature(payload, c.signature, c.secret) ? 'true\n' : 'false\n');
  } catch (e) {
    process.stdout.write(`throw: ${e.message}\n`);
  }
}
