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
 * multipart/form-data with a boundary, or the body does not parse as one.
 */
export function parseMultipart(body: Uint8Array, contentType: string | undefined): MultipartPart[] | null {
  if (contentType === undefined || !/^multipart\/form-data\s*;.*\bboundary=/i.test(contentType)) return null;
  const parts = uWS.getParts(body, contentType);
  if (parts === undefined) return null;
  // The part buffers may point into memory uWS does not promise to keep: copy them now.
  return parts.map((part) => ({
    name: part.name,
    data: Buffer.from(new Uint8Array(part.data)),
    type: part.type,
    filename: part.filename,
  }));
}
