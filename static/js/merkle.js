// Checks a transaction's merkle inclusion proof in the browser, with WebCrypto
// SHA-256, from the CID and proof the page embeds (#merkle-data), so the reader
// need not take the node's word for it. The rules are chain/core/merkle.py's:
//   leaf = SHA-256(0x00 ‖ CID bytes); node = SHA-256(0x01 ‖ left ‖ right);
//   an odd last node is promoted unchanged. The sides are re-derived from the
//   index and leaf count, never trusted from the proof.
(function () {
  "use strict";
  const data = document.getElementById("merkle-data");
  const out = document.getElementById("merkle-browser-check");
  if (!data || !out) return;

  function show(state, key) {
    out.className = state;
    out.textContent = out.dataset[key];
  }

  const ALPHABET = "abcdefghijklmnopqrstuvwxyz234567";

  // A CIDv1 string: multibase "b" (RFC 4648 base32, lowercase, no padding).
  function cidBytes(text) {
    if (text[0] !== "b") throw new Error("not a base32 CIDv1");
    const bytes = [];
    let buffer = 0;
    let bits = 0;
    for (const ch of text.slice(1)) {
      const value = ALPHABET.indexOf(ch);
      if (value < 0) throw new Error("bad base32 character");
      buffer = (buffer << 5) | value;
      bits += 5;
      if (bits >= 8) {
        bits -= 8;
        bytes.push((buffer >> bits) & 0xff);
      }
    }
    return new Uint8Array(bytes);
  }

  function hexBytes(hex) {
    if (!/^[0-9a-f]{64}$/.test(hex)) throw new Error("bad hash");
    return new Uint8Array(hex.match(/../g).map((h) => parseInt(h, 16)));
  }

  function hex(bytes) {
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function sha256(...parts) {
    const length = parts.reduce((n, p) => n + p.length, 0);
    const joined = new Uint8Array(length);
    let offset = 0;
    for (const part of parts) {
      joined.set(part, offset);
      offset += part.length;
    }
    return new Uint8Array(await crypto.subtle.digest("SHA-256", joined));
  }

  // The side of the sibling on each level, or null where the node is promoted.
  function shape(index, count) {
    const sides = [];
    while (count > 1) {
      if (index % 2) sides.push("left");
      else if (index + 1 < count) sides.push("right");
      else sides.push(null);
      index = Math.floor(index / 2);
      count = Math.ceil(count / 2);
    }
    return sides.filter((side) => side !== null);
  }

  async function check(doc) {
    const proof = doc.proof;
    if (proof.format !== 1 || proof.leaf_count !== doc.leaf_count) return false;
    if (!(proof.index >= 0 && proof.index < proof.leaf_count)) return false;
    const expected = shape(proof.index, proof.leaf_count);
    if (expected.length !== proof.path.length) return false;
    if (proof.path.some((step, i) => step.side !== expected[i])) return false;
    let digest = await sha256(new Uint8Array([0]), cidBytes(doc.cid));
    for (const step of proof.path) {
      const sibling = hexBytes(step.hash);
      digest = step.side === "left"
        ? await sha256(new Uint8Array([1]), sibling, digest)
        : await sha256(new Uint8Array([1]), digest, sibling);
    }
    return hex(digest) === doc.root;
  }

  if (!window.crypto || !window.crypto.subtle) {
    show("warn", "unavailable");
    return;
  }
  show("warn", "pending");
  check(JSON.parse(data.textContent))
    .then((ok) => show(ok ? "ok" : "bad", ok ? "ok" : "bad"))
    .catch(() => show("bad", "bad"));
})();
