/** Unix time in whole seconds: how the API and the stored rows express timestamps. */
export function nowSeconds(): number {
  return Math.floor(Date.now() / 1000);
}
