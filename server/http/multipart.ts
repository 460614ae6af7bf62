import uWS from 'uWebSockets.js';

/** One part of a multipart/form-data body, with its bytes copied out of the request body. */
export interface MultipartPart {
  name: string;
  data: Buffer;
  /** The part's declared Content-Type: the client's claim, never trusted for what the bytes are. */
  type: string | undefined;
  filename: string | undefined;
}

/**
 * Parses a complete multipart/form-data body with uWS's native parser (the one uWS module we
 * already depend on, so no second parser to keep). Returns null when the content type is not
 * multipart/form-data with a valid boundary, or the body does not parse as one.
 */
export function parseMultipart(body: Uint8Array, contentType: string | undefined): MultipartPart[] | null {
  const boundary = multipartBoundary(contentType);
  if (boundary === null) return null;
  // uWS reads the boundary as everything after `boundary=` and knows neither quotes nor other
  // parameters, so it is handed the one spelling it understands.
  const parts = uWS.getParts(body, `multipart/form-data; boundary=${boundary}`);
  if (parts === undefined) return null;
  // The part buffers point into the body's memory, which nothing ties to their lifetime: copy them.
  return parts.map((part) => ({
    name: part.name,
    data: Buffer.from(new Uint8Array(part.data)),
    type: part.type,
    filename: part.filename,
  }));
}

/** RFC 2046 bchars: what a boundary may contain (a space, but not at its end), 1 to 70 of them. */
const BOUNDARY = /^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$/;
/** One `; name=value` parameter (RFC 9110): the value a token or a quoted string with \-escapes. */
const PARAMETER = /^[ \t]*;[ \t]*([!#$%&'*+\-.^_`|~0-9A-Za-z]+)=(?:([!#$%&'*+\-.^_`|~0-9A-Za-z]+)|"((?:[^"\\]|\\.)*)")[ \t]*/;

/** The boundary of a `multipart/form-data` content type (any case, quoted or not), or null. */
function multipartBoundary(contentType: string | undefined): string | null {
  if (contentType === undefined) return null;
  const semicolon = contentType.indexOf(';');
  if (semicolon === -1 || contentType.slice(0, semicolon).trim().toLowerCase() !== 'multipart/form-data') return null;
  let rest = contentType.slice(semicolon);
  let boundary: string | null = null;
  while (rest.trim() !== '') {
    const match = PARAMETER.exec(rest);
    if (match === null) return null;
    const value = match[2] ?? (match[3] as string).replace(/\\(.)/g, '$1');
    if ((match[1] as string).toLowerCase() === 'boundary') {
      if (boundary !== null) return null;
      boundary = value;
    }
    rest = rest.slice(match[0].length);
  }
  return boundary !== null && BOUNDARY.test(boundary) ? boundary : null;
}
