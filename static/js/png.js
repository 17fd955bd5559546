// The browser's one mask codec: 8-bit grayscale PNG (colour type 0) in and out.
//
// Why not canvas.toBlob("image/png")? It always writes RGBA, while the dataset format and the
// server want 8-bit grayscale ("L"). So we write the PNG ourselves: the IDAT stream is zlib,
// which Chromium's CompressionStream("deflate") produces natively (off the JS heap, fast).
// Each row uses the "Up" filter: soft maps are smooth vertically, so it compresses well for free.

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes, crc = 0xffffffff) {
  for (let i = 0; i < bytes.length; i++) crc = CRC_TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return crc;
}

function chunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  const crc = crc32(data, crc32(out.subarray(4, 8))) ^ 0xffffffff;
  view.setUint32(8 + data.length, crc >>> 0);
  return out;
}

async function zlibDeflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** Encode a width*height Uint8Array (row-major, 0..255) as a grayscale PNG Blob. */
export async function encodeGrayPNG(pixels, width, height) {
  if (pixels.length !== width * height) throw new Error(`mask has ${pixels.length} pixels, expected ${width}x${height}`);
  const raw = new Uint8Array((width + 1) * height);
  for (let y = 0; y < height; y++) {
    const row = y * (width + 1);
    const src = y * width;
    if (y === 0) {
      raw[row] = 0; // None
      raw.set(pixels.subarray(src, src + width), row + 1);
    } else {
      raw[row] = 2; // Up
      const prev = src - width;
      for (let x = 0; x < width; x++) raw[row + 1 + x] = (pixels[src + x] - pixels[prev + x]) & 0xff;
    }
  }
  const ihdr = new Uint8Array(13);
  const v = new DataView(ihdr.buffer);
  v.setUint32(0, width);
  v.setUint32(4, height);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 0; // colour type: grayscale
  const idat = await zlibDeflate(raw);
  const signature = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]);
  return new Blob([signature, chunk("IHDR", ihdr), chunk("IDAT", idat), chunk("IEND", new Uint8Array(0))], {
    type: "image/png",
  });
}

/**
 * Decode any image (Blob or URL) to a width*height Uint8Array of its gray level, resized to the
 * requested size when it differs. Colour management is off so a stored 200 reads back as 200.
 */
export async function decodeGray(source, width, height) {
  let blob = source;
  if (typeof source === "string") {
    const res = await fetch(source, { credentials: "same-origin" });
    if (!res.ok) throw new Error(`could not load ${source}: HTTP ${res.status}`);
    blob = await res.blob();
  }
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const w = width || bitmap.width;
  const h = height || bitmap.height;
  const canvas = new OffscreenCanvas(w, h);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bitmap, 0, 0, w, h);
  bitmap.close();
  const rgba = ctx.getImageData(0, 0, w, h).data;
  const out = new Uint8Array(w * h);
  for (let i = 0, j = 0; i < out.length; i++, j += 4) out[i] = rgba[j];
  return out;
}
