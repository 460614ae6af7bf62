import Bowser from 'bowser';
import { DEVICE_NAME_MAX_LENGTH } from '../../shared/schemas/sessions.ts';

/** What a session is called when neither the client nor its User-Agent says anything useful. */
const UNKNOWN_DEVICE = 'Unknown device';

/**
 * Longer User-Agents are cut before parsing: no real one is this long, and bowser's patterns
 * should not be run over whatever a client chooses to send.
 */
const MAX_PARSED_USER_AGENT = 512;

/**
 * A readable name for the device behind a User-Agent: "Firefox on Linux" for browsers (and
 * Electron apps), the product name for other clients ("curl", "okhttp"), else "Unknown device".
 */
export function deviceNameFromUserAgent(userAgent: string | null): string {
  const agent = userAgent?.slice(0, MAX_PARSED_USER_AGENT).trim() ?? '';
  if (agent === '') return UNKNOWN_DEVICE;
  let browser: string | undefined;
  let os: string | undefined;
  try {
    const parsed = Bowser.parse(agent);
    browser = parsed.browser.name || undefined;
    os = parsed.os.name || undefined;
  } catch {
    // An agent bowser cannot read is named from its product token below, like any other.
  }
  if (browser !== undefined && os !== undefined) return clip(`${browser} on ${os}`);
  if (browser !== undefined || os !== undefined) return clip(browser ?? os ?? UNKNOWN_DEVICE);
  // Non-browser clients put their name first ("curl/8.5.0", "python-requests/2.31").
  const product = /^[A-Za-z][A-Za-z0-9._-]*/.exec(agent)?.[0];
  return product === undefined ? UNKNOWN_DEVICE : clip(product);
}

function clip(name: string): string {
  return name.slice(0, DEVICE_NAME_MAX_LENGTH);
}
