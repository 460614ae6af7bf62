import sharp, { type Sharp } from 'sharp';

/**
 * Test images, generated with sharp at run time (no committed binaries). `halves` paints the left
 * half red and the right half blue, so orientation and cropping can be checked from pixels.
 */
function halves(width: number, height: number, frames = 1): Buffer {
  const raw = Buffer.alloc(width * height * frames * 3);
  for (let f = 0; f < frames; f += 1) {
    for (let y = 0; y < height; y += 1) {
      for (let x = 0; x < width; x += 1) {
        const at = ((f * height + y) * width + x) * 3;
        const left = x < width / 2;
        raw[at] = left ? 255 : 0;
        raw[at + 1] = f * 40;
        raw[at + 2] = left ? 0 : 255;
      }
    }
  }
  return raw;
}

function fromRaw(width: number, height: number, frames = 1): Sharp {
  return sharp(halves(width, height, frames), { raw: { width, height: height * frames, channels: 3, pageHeight: height } });
}

export const makePng = (width = 320, height = 200) => fromRaw(width, height).png().toBuffer();
export const makeWebp = (width = 320, height = 200) => fromRaw(width, height).webp().toBuffer();
export const makeGif = (width = 320, height = 200) => fromRaw(width, height).gif().toBuffer();
export const makeAnimatedGif = (frames = 3, width = 300, height = 200) =>
  fromRaw(width, height, frames)
    .gif({ delay: Array.from({ length: frames }, (_, i) => 100 * (i + 1)), loop: 0 })
    .toBuffer();
export const makeAnimatedWebp = (frames = 3, width = 300, height = 200) =>
  fromRaw(width, height, frames)
    .webp({ delay: Array.from({ length: frames }, () => 80), loop: 0 })
    .toBuffer();

/** A JPEG stored sideways with EXIF orientation 6 (display rotated 90° clockwise), a GPS position and an owner. */
export const makeJpegWithExif = (width = 400, height = 200) =>
  fromRaw(width, height)
    .jpeg()
    .withExif({
      IFD0: { Copyright: 'secret-owner-name' },
      IFD3: { GPSLatitudeRef: 'N', GPSLatitude: '48/1 51/1 24/1', GPSMapDatum: 'secret-gps-datum' },
    })
    .withMetadata({ orientation: 6 })
    .toBuffer();

/** A noisy image: big enough that encoding it is real work. */
export function makeNoisyJpeg(width: number, height: number, seed: number): Promise<Buffer> {
  const raw = Buffer.alloc(width * height * 3);
  let state = seed * 2654435761;
  for (let i = 0; i < raw.length; i += 1) {
    state = (state * 1103515245 + 12345) >>> 0;
    raw[i] = state >>> 24;
  }
  return sharp(raw, { raw: { width, height, channels: 3 } })
    .jpeg({ quality: 90 })
    .toBuffer();
}

/**
 * A real 1×1 PNG whose header is rewritten to claim `width`×`height`: tiny on disk, gigantic if a
 * decoder believed it and allocated the pixels.
 */
export async function makePngClaiming(width: number, height: number): Promise<Buffer> {
  const png = Buffer.from(
    await sharp({ create: { width: 1, height: 1, channels: 3, background: 'white' } })
      .png()
      .toBuffer(),
  );
  // Signature (8) + IHDR length (4) + "IHDR" (4), then width and height; the CRC covers type + data.
  png.writeUInt32BE(width, 16);
  png.writeUInt32BE(height, 20);
  png.writeUInt32BE(crc32(png.subarray(12, 29)), 29);
  return png;
}

function crc32(bytes: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of bytes) {
    crc ^= byte;
    for (let k = 0; k < 8; k += 1) crc = crc & 1 ? (crc >>> 1) ^ 0xedb88320 : crc >>> 1;
  }
  return (crc ^ 0xffffffff) >>> 0;
}
