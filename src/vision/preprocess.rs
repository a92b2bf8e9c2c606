//! Image preprocessing for the vision tower, as pure functions over pixels.
//!
//! - Resizing is Pillow's `Image.resize(size, BICUBIC)` exactly: a separable convolution with the
//!   Keys cubic (a = -0.5), support widened by the downscale factor (antialiasing), horizontal pass
//!   first, both passes in 22-bit fixed point rounded and clipped to 8 bits. The original LLaVA code
//!   and lmms-eval resize with Pillow; transformers 5.x resizes with torchvision, which differs by a
//!   level or two on some pixels.
//! - Normalization: `(x - mean*255) / (std*255)` in f32 per channel (for LLaVA-OneVision mean = std =
//!   0.5, that is `x/127.5 - 1`), laid out CHW.
//! - Video frames are squashed to the tower's input size; single images take the anyres_max_9 path:
//!   the best grid resolution, an aspect-preserving resize, black padding and tiles, after a squashed
//!   base image.

use crate::media::Frame;

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output pixel: the first input pixel, the number of inputs, and fixed-point weights.
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    weights: Vec<i32>,
}

fn coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // Truncation toward zero, as C's (int) cast.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for x in 0..ksize {
            let w = if x < xmax && ww != 0.0 { k[x] / ww } else { 0.0 };
            let fixed = w * f64::from(1u32 << PRECISION_BITS);
            weights[xx * ksize + x] = if w < 0.0 { (-0.5 + fixed) as i32 } else { (0.5 + fixed) as i32 };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs { bounds, ksize, weights }
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes RGB data to `out_w` x `out_h` with Pillow's bicubic resampling.
pub fn resize_bicubic(src: &Frame, out_w: u32, out_h: u32) -> Frame {
    let (w, h) = (src.width as usize, src.height as usize);
    let (ow, oh) = (out_w as usize, out_h as usize);
    let horizontal = coeffs(w, ow);
    let vertical = coeffs(h, oh);
    let need_h = ow != w;
    let need_v = oh != h;

    // Horizontal pass over only the rows the vertical pass reads.
    let (first_row, last_row) = if need_v {
        let last = vertical.bounds[oh - 1];
        (vertical.bounds[0].0, last.0 + last.1)
    } else {
        (0, h)
    };
    let (tmp, tmp_w, row0) = if need_h {
        let rows = last_row - first_row;
        let mut out = vec![0u8; rows * ow * 3];
        for y in 0..rows {
            let line = &src.rgb[(y + first_row) * w * 3..(y + first_row + 1) * w * 3];
            for xx in 0..ow {
                let (xmin, xmax) = horizontal.bounds[xx];
                let k = &horizontal.weights[xx * horizontal.ksize..];
                let mut ss = [1i64 << (PRECISION_BITS - 1); 3];
                for x in 0..xmax {
                    let p = &line[(x + xmin) * 3..(x + xmin) * 3 + 3];
                    let wgt = i64::from(k[x]);
                    ss[0] += i64::from(p[0]) * wgt;
                    ss[1] += i64::from(p[1]) * wgt;
                    ss[2] += i64::from(p[2]) * wgt;
                }
                out[(y * ow + xx) * 3..(y * ow + xx) * 3 + 3].copy_from_slice(&[clip8(ss[0]), clip8(ss[1]), clip8(ss[2])]);
            }
        }
        (out, ow, first_row)
    } else {
        (src.rgb.clone(), w, 0)
    };
    if !need_v {
        return Frame { width: out_w, height: (tmp.len() / (tmp_w * 3)) as u32, rgb: tmp };
    }
    let mut out = vec![0u8; ow * oh * 3];
    for yy in 0..oh {
        let (ymin, ymax) = vertical.bounds[yy];
        let ymin = ymin - row0;
        let k = &vertical.weights[yy * vertical.ksize..];
        for xx in 0..tmp_w {
            let mut ss = [1i64 << (PRECISION_BITS - 1); 3];
            for y in 0..ymax {
                let p = &tmp[((y + ymin) * tmp_w + xx) * 3..((y + ymin) * tmp_w + xx) * 3 + 3];
                let wgt = i64::from(k[y]);
                ss[0] += i64::from(p[0]) * wgt;
                ss[1] += i64::from(p[1]) * wgt;
                ss[2] += i64::from(p[2]) * wgt;
            }
            out[(yy * tmp_w + xx) * 3..(yy * tmp_w + xx) * 3 + 3].copy_from_slice(&[clip8(ss[0]), clip8(ss[1]), clip8(ss[2])]);
        }
    }
    Frame { width: out_w, height: out_h, rgb: out }
}

/// CHW f32 of an RGB frame: `(x - mean*255) / (std*255)` per channel.
pub fn normalize(frame: &Frame, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let n = frame.width as usize * frame.height as usize;
    let mut out = vec![0f32; 3 * n];
    for c in 0..3 {
        let (m, s) = (mean[c] * 255.0, std[c] * 255.0);
        for i in 0..n {
            out[c * n + i] = (f32::from(frame.rgb[i * 3 + c]) - m) / s;
        }
    }
    out
}

/// Cuts a CHW image of `size` x `size` into non-overlapping `patch` x `patch` patches, row-major,
/// each flattened in (channel, row, column) order: the layout of the patch embedding's weight
/// ([hidden, 3, patch, patch] in PyTorch). Pixels past the last whole patch are discarded, as the
/// convolution without padding does. Returns [n_patches][3 * patch * patch].
pub fn patchify(chw: &[f32], size: usize, patch: usize) -> Vec<f32> {
    let grid = size / patch;
    let per = 3 * patch * patch;
    let mut out = vec![0f32; grid * grid * per];
    for pr in 0..grid {
        for pc in 0..grid {
            let dst = &mut out[(pr * grid + pc) * per..(pr * grid + pc + 1) * per];
            for c in 0..3 {
                for ky in 0..patch {
                    let src = c * size * size + (pr * patch + ky) * size + pc * patch;
                    dst[(c * patch + ky) * patch..(c * patch + ky + 1) * patch].copy_from_slice(&chw[src..src + patch]);
                }
            }
        }
    }
    out
}

/// The grid resolution (height, width) anyres picks: the largest effective resolution, then the
/// least waste (transformers' `select_best_resolution`).
pub fn select_best_resolution(original: (u32, u32), pinpoints: &[(u32, u32)]) -> (u32, u32) {
    let (oh, ow) = (f64::from(original.0), f64::from(original.1));
    let mut best = pinpoints[0];
    let mut max_effective = 0i64;
    let mut min_wasted = i64::MAX;
    for &(h, w) in pinpoints {
        let scale = (f64::from(w) / ow).min(f64::from(h) / oh);
        let (dw, dh) = ((ow * scale) as i64, (oh * scale) as i64);
        let effective = (dw * dh).min((ow * oh) as i64);
        let wasted = i64::from(w) * i64::from(h) - effective;
        if effective > max_effective || (effective == max_effective && wasted < min_wasted) {
            max_effective = effective;
            min_wasted = wasted;
            best = (h, w);
        }
    }
    best
}

/// The size (height, width) an image takes inside `target` keeping its aspect ratio
/// (transformers' `get_patch_output_size`).
pub fn patch_output_size(original: (u32, u32), target: (u32, u32)) -> (u32, u32) {
    let (oh, ow) = (f64::from(original.0), f64::from(original.1));
    let (th, tw) = target;
    let (scale_w, scale_h) = (f64::from(tw) / ow, f64::from(th) / oh);
    if scale_w < scale_h {
        (((oh * scale_w).ceil() as u32).min(th), tw)
    } else {
        (th, ((ow * scale_h).ceil() as u32).min(tw))
    }
}

/// The crops of the anyres path: the whole image squashed to `size`, then the tiles of the image
/// resized into the best grid resolution and padded with black. Returns the crops and the grid
/// (rows, columns).
pub fn anyres_crops(image: &Frame, pinpoints: &[(u32, u32)], size: u32) -> (Vec<Frame>, (u32, u32)) {
    let best = select_best_resolution((image.height, image.width), pinpoints);
    let (nh, nw) = patch_output_size((image.height, image.width), best);
    let resized = resize_bicubic(image, nw, nh);
    // Center, with the extra pixel (when odd) on the right and bottom.
    let (pad_x, pad_y) = ((best.1 - nw) / 2, (best.0 - nh) / 2);
    let (bw, bh) = (best.1 as usize, best.0 as usize);
    let mut padded = vec![0u8; bw * bh * 3];
    for y in 0..nh as usize {
        let dst = ((y + pad_y as usize) * bw + pad_x as usize) * 3;
        padded[dst..dst + nw as usize * 3].copy_from_slice(&resized.rgb[y * nw as usize * 3..(y + 1) * nw as usize * 3]);
    }
    let grid = (best.0 / size, best.1 / size);
    let mut crops = vec![resize_bicubic(image, size, size)];
    let s = size as usize;
    for gy in 0..grid.0 as usize {
        for gx in 0..grid.1 as usize {
            let mut tile = Vec::with_capacity(s * s * 3);
            for y in 0..s {
                let row = (gy * s + y) * bw + gx * s;
                tile.extend_from_slice(&padded[row * 3..(row + s) * 3]);
            }
            crops.push(Frame { width: size, height: size, rgb: tile });
        }
    }
    (crops, grid)
}

/// The number of tiles anyres cuts an image into (crops are this plus the base image).
pub fn anyres_grid(image: &Frame, pinpoints: &[(u32, u32)], size: u32) -> usize {
    let best = select_best_resolution((image.height, image.width), pinpoints);
    ((best.0 / size) * (best.1 / size)) as usize
}

/// LLaVA-OneVision's grid resolutions: every (h, w) in {384, 768, ..., 2304}^2.
pub fn default_pinpoints(size: u32) -> Vec<(u32, u32)> {
    let sides: Vec<u32> = (1..=6).map(|k| k * size).collect();
    sides.iter().flat_map(|&h| sides.iter().map(move |&w| (h, w))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> Frame {
        let mut rgb = Vec::new();
        for y in 0..h {
            for x in 0..w {
                rgb.extend_from_slice(&[(x * 255 / w.max(2)) as u8, (y * 255 / h.max(2)) as u8, ((x + y) % 256) as u8]);
            }
        }
        Frame { width: w, height: h, rgb }
    }

    #[test]
    fn same_size_is_identity_and_constant_stays_constant() {
        let f = gradient(37, 23);
        assert_eq!(resize_bicubic(&f, 37, 23), f);
        let flat = Frame { width: 50, height: 30, rgb: vec![77; 50 * 30 * 3] };
        for (w, h) in [(384, 384), (7, 5), (100, 3)] {
            assert!(resize_bicubic(&flat, w, h).rgb.iter().all(|&v| v == 77));
        }
    }

    #[test]
    fn normalize_matches_the_hf_formula() {
        let f = Frame { width: 2, height: 1, rgb: vec![0, 127, 255, 128, 64, 1] };
        let v = normalize(&f, [0.5; 3], [0.5; 3]);
        // transformers' fused (x - 0.5*255) / (0.5*255), in f32; channel-major (CHW).
        let hf = |x: f32| (x - 127.5) / 127.5;
        assert_eq!(v, [hf(0.0), hf(128.0), hf(127.0), hf(64.0), hf(255.0), hf(1.0)]);
    }

    #[test]
    fn patches_are_in_channel_row_column_order() {
        let size = 4;
        let chw: Vec<f32> = (0..3 * size * size).map(|i| i as f32).collect();
        let p = patchify(&chw, size, 2);
        assert_eq!(p.len(), 4 * 12);
        // Patch (0,1): channel 0 rows 0..2, columns 2..4, then channel 1, ...
        assert_eq!(&p[12..18], &[2.0, 3.0, 6.0, 7.0, 18.0, 19.0]);
        // A 384 image with 14-pixel patches keeps 27x27 and drops the last 6 rows and columns.
        assert_eq!(patchify(&vec![0.0; 3 * 384 * 384], 384, 14).len(), 729 * 588);
    }

    #[test]
    fn anyres_geometry_follows_transformers() {
        let pins = default_pinpoints(384);
        assert_eq!(pins.len(), 36);
        // The spec's check value: a 899x1024 (h x w) image fits 1152x1152.
        assert_eq!(select_best_resolution((899, 1024), &pins), (1152, 1152));
        assert_eq!(select_best_resolution((300, 500), &pins), (384, 768));
        assert_eq!(patch_output_size((300, 500), (384, 768)), (384, 640));
        let img = gradient(500, 300);
        let (crops, grid) = anyres_crops(&img, &pins, 384);
        assert_eq!((crops.len(), grid), (3, (1, 2)));
        assert!(crops.iter().all(|c| (c.width, c.height) == (384, 384)));
        // The 640-wide resize sits 64 pixels in: the first tile's left columns are padding.
        assert_eq!(&crops[1].rgb[..3], &[0, 0, 0]);
    }
}
