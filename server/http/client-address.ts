/**
 * The address of the client behind a request. `X-Forwarded-For` is believed only when the
 * connection comes from a trusted proxy (`--trust-proxy`), and then only as far as the chain of
 * trusted proxies reaches: the rightmost address that is not one of them is the client (anything
 * to its left was written by the client itself and may be forged). Without trusted proxies the
 * header is ignored, so no client can pick the address its rate limits count against.
 */
export function clientAddress(peer: string, forwardedFor: string | undefined, trusted: ReadonlySet<string>): string {
  if (forwardedFor === undefined || !trusted.has(peer)) return peer;
  const hops = forwardedFor
    .split(',')
    .map((hop) => hop.trim())
    .filter((hop) => hop !== '');
  for (let i = hops.length - 1; i >= 0; i -= 1) {
    const hop = hops[i] as string;
    if (!trusted.has(hop)) return hop;
  }
  return hops[0] ?? peer;
}
