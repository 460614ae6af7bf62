import type { Metadata } from 'sharp';

/**
 * sharp (libvips) costs tens of MB of resident memory once loaded: it is loaded on the first
 * avatar upload, not at start-up (Node caches the module after that).
 */
async function loadSharp(): Promise<typeof import('sharp')['default']> {
  const sharp = (await import('sharp')).default;
  // Process-wide libvips settings, set on every load because they are cheap and idempotent:
  // - no operation cache: every upload is a different image, so the cache never hits; it only
  //   keeps up to 50 MB of earlier inputs and results alive after a burst;
  // - one libvips thread per image (JobQueue already runs several at once): every extra thread
  //   gets its own malloc arena, whose freed memory glibc rarely gives back.
  sharp.cache(false);
  sharp.concurrency(1);
  return sharp;
}
import { AVATAR_SIZE } from '../../shared/schemas/avatars.ts';
import { AppError } from '../core/app-error.ts';

type ImageFormat = 'png' | 'jpeg' | 'gif' | 'webp';

export interface ImageLimits {
  /** Width × height × frames the input may decode to. */
  maxPixels: number;
  maxFrames: number;
}

export interface ProbedImage {
  format: ImageFormat;
  width: number;
  height: number;
  frames: number;
}

export interface EncodedAvatar {
  bytes: Buffer;
  contentType: 'image/webp';
  width: number;
  height: number;
  animated: boolean;
}

/** Past this, a job is stuck or hostile: give up rather than hold a worker thread. */
const PROCESS_TIMEOUT_SECONDS = 20;

const ACCEPTED = 'The file must be a PNG, JPEG, WebP or GIF image';

/**
 * The format from the file's magic number, or null. This is the first gate: whatever the client
 * claims, only these four signatures ever reach a decoder (no SVG, no HEIF/TIFF/PDF loaders).
 */
function sniffFormat(bytes: Uint8Array): ImageFormat | null {
  const starts = (offset: number, signature: readonly number[]) =>
    bytes.length >= offset + signature.length && signature.every((byte, i) => bytes[offset + i] === byte);
  if (starts(0, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return 'png';
  if (starts(0, [0xff, 0xd8, 0xff])) return 'jpeg';
  if (starts(0, [0x47, 0x49, 0x46, 0x38]) && (bytes[4] === 0x37 || bytes[4] === 0x39) && bytes[5] === 0x61) return 'gif';
  if (starts(0, [0x52, 0x49, 0x46, 0x46]) && starts(8, [0x57, 0x45, 0x42, 0x50])) return 'webp';
  return null;
}

/**
 * Reads only the header (sharp's metadata does not decode pixels) and enforces the pixel and
 * frame limits from it, so a tiny file that would decode to gigabytes is refused at once.
 */
export async function probeImage(bytes: Uint8Array, limits: ImageLimits): Promise<ProbedImage> {
  const sniffed = sniffFormat(bytes);
  if (sniffed === null) throw new AppError('invalid_file_type', ACCEPTED);
  let metadata: Metadata;
  try {
    const sharp = await loadSharp();
    metadata = await sharp(bytes, { limitInputPixels: false }).metadata();
  } catch {
    throw new AppError('invalid_file_type', `The ${sniffed.toUpperCase()} file is corrupt or truncated`);
  }
  // Sharp decides by content too; a disagreement means a polyglot or a damaged file.
  if (metadata.format !== sniffed || !metadata.width || !metadata.height) {
    throw new AppError('invalid_file_type', ACCEPTED);
  }
  const frames = Math.max(1, metadata.pages ?? 1);
  if (frames > limits.maxFrames) {
    throw new AppError('too_many_frames', `The animation has ${frames} frames; the limit is ${limits.maxFrames}`);
  }
  const pixels = metadata.width * metadata.height * frames;
  if (pixels > limits.maxPixels) {
    const what = frames > 1 ? `${metadata.width}×${metadata.height} pixels × ${frames} frames` : `${metadata.width}×${metadata.height} pixels`;
    throw new AppError('image_too_large', `The image is ${what}; the limit is ${limits.maxPixels} pixels in all`);
  }
  return { format: sniffed, width: metadata.width, height: metadata.height, frames };
}

/**
 * Auto-orients, crops to a centred square, resizes to AVATAR_SIZE and re-encodes as WebP. Nothing
 * of the input's metadata survives (sharp writes none unless asked): no EXIF, GPS or ICC text.
 * Animations stay animated, with their frame delays and loop count.
 */
export async function encodeAvatar(bytes: Uint8Array, probed: ProbedImage, limits: ImageLimits): Promise<EncodedAvatar> {
  const animated = probed.frames > 1;
  try {
    const sharp = await loadSharp();
    const { data, info } = await sharp(bytes, {
      animated,
      // The probe checked the header; this is the decoder's own guard, should the two disagree.
      limitInputPixels: limits.maxPixels,
      failOn: 'error',
      sequentialRead: true,
    })
      .timeout({ seconds: PROCESS_TIMEOUT_SECONDS })
      .autoOrient()
      .resize(AVATAR_SIZE, AVATAR_SIZE, { fit: 'cover', position: 'centre' })
      .webp({ quality: 82, effort: 4 })
      .toBuffer({ resolveWithObject: true });
    const frames = info.pages ?? 1;
    return {
      bytes: data,
      contentType: 'image/webp',
      width: info.width,
      height: info.pageHeight ?? info.height,
      animated: animated && frames > 1,
    };
  } catch {
    throw new AppError('invalid_file_type', `The ${probed.format.toUpperCase()} image could not be decoded (corrupt or truncated)`);
  }
}
