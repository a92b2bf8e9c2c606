//! How a prompt is split into prefill chunks.
//!
//! ggml's CPU flash attention processes queries in tiles of 64 (`GGML_FA_TILE_Q` in
//! ggml-cpu/common.h, pinned llama-cpp-sys-2 0.1.161). It takes that tiled path, with F32 queries,
//! scores and output accumulator, only when a batch has at least a tile of queries; a batch with
//! fewer goes row by row, with the queries converted to the cache's F16 and, for an F16 cache, the
//! running V sum kept in F16. Plain chunking (`n_batch` rows at a time) leaves the remainder as the
//! last chunk, and the last chunk holds the position whose logits matter, so a prompt of, say,
//! 2,048 + 7 positions lost precision exactly where it is read. The plan below never lets a chunk
//! of a prompt of at least a tile fall under the tile when `n_batch` allows it.

/// Queries per tile of ggml's CPU flash attention.
pub const FLASH_ATTN_Q_TILE: usize = 64;

/// Chunk lengths for `n` positions: each at most `n_batch`, summing to `n`, in order.
///
/// Plain chunking is kept when its last chunk has at least `tile` rows (or is the only one). Else
/// the last few chunks are evened out, as few as it takes for each to reach `tile` (two suffice
/// whenever `n_batch >= 2 * tile`); when no number of them does (`n_batch` barely above or below
/// the tile), plain chunking is kept, since no plan avoids the small path.
pub fn plan(n: usize, n_batch: usize, tile: usize) -> Vec<usize> {
    let n_batch = n_batch.max(1);
    if n == 0 {
        return Vec::new();
    }
    let k = n.div_ceil(n_batch);
    let mut sizes = vec![n_batch; k];
    sizes[k - 1] = n - (k - 1) * n_batch;
    if sizes[k - 1] >= tile {
        return sizes;
    }
    for m in 2..=k {
        let tail = n - (k - m) * n_batch;
        let (each, extra) = (tail / m, tail % m);
        if each >= tile {
            // The tail is less than m full chunks, so `each + 1` still fits in n_batch.
            for (i, s) in sizes[k - m..].iter_mut().enumerate() {
                *s = each + usize::from(i < extra);
            }
            return sizes;
        }
    }
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(n: usize, n_batch: usize) -> Vec<usize> {
        (0..n).collect::<Vec<_>>().chunks(n_batch).map(<[usize]>::len).collect()
    }

    #[test]
    fn examples() {
        assert_eq!(plan(0, 512, 64), Vec::<usize>::new());
        assert_eq!(plan(1, 512, 64), vec![1]);
        assert_eq!(plan(10, 512, 64), vec![10]);
        assert_eq!(plan(512, 512, 64), vec![512]);
        assert_eq!(plan(1617, 512, 64), vec![512, 512, 512, 81]);
        assert_eq!(plan(2055, 512, 64), vec![512, 512, 512, 260, 259]);
        assert_eq!(plan(513, 512, 64), vec![257, 256]);
        // With chunks of 100 two are not enough: 105 over two is under the tile, 205 over three is not.
        assert_eq!(plan(1405, 100, 64), [vec![100; 12], vec![69, 68, 68]].concat());
        // A tile-sized batch cannot be helped.
        assert_eq!(plan(130, 64, 64), vec![64, 64, 2]);
        assert_eq!(plan(130, 32, 64), vec![32, 32, 32, 32, 2]);
        assert_eq!(plan(5, 0, 64), vec![1; 5]);
    }

    #[test]
    fn every_plan_covers_the_prompt_within_the_batch() {
        let tile = FLASH_ATTN_Q_TILE;
        for n_batch in [1, 2, 7, 63, 64, 65, 66, 100, 127, 128, 129, 300, 512, 2048] {
            for n in 0..3000 {
                let p = plan(n, n_batch, tile);
                let old = plain(n, n_batch);
                assert_eq!(p.iter().sum::<usize>(), n, "n {n}, n_batch {n_batch}");
                assert!(p.iter().all(|&s| s > 0 && s <= n_batch), "n {n}, n_batch {n_batch}: {p:?}");
                // Never more chunks than plain chunking, so no more graph runs.
                assert_eq!(p.len(), old.len(), "n {n}, n_batch {n_batch}");
                if old.last().is_none_or(|&l| l >= tile || old.len() == 1) {
                    assert_eq!(p, old, "n {n}, n_batch {n_batch}: changed a plan that needed no change");
                } else if n_batch >= 2 * tile {
                    assert!(p.iter().all(|&s| s >= tile), "n {n}, n_batch {n_batch}: {p:?}");
                    // Only the last two move.
                    assert_eq!(p[..p.len() - 2], old[..old.len() - 2], "n {n}, n_batch {n_batch}");
                }
                if n >= tile && n_batch > tile && p.iter().any(|&s| s < tile) {
                    // Only when no split can do better: even the evenest split into that many
                    // chunks falls short (and more chunks are only smaller).
                    assert!(n / p.len() < tile, "n {n}, n_batch {n_batch}: {p:?}");
                }
            }
        }
    }
}
