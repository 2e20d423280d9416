//! Top-k selection over indexer logits (spec 1.2 step 8), with block-table translation.
//!
//! Rules, shared by every function here:
//! * only values inside the row's range `[start, end)` compete;
//! * NaN and `-inf` are never selected (`-inf` is the masked value, so a row with fewer
//!   than k finite values yields all of them and then `-1` padding);
//! * ties are broken by the smaller index;
//! * the output is sorted by (value descending, index ascending) and padded with `-1` to
//!   length k. Kernels may emit the same set in another order: compare as sets.

use crate::cache::PAGE_SIZE;
use rayon::prelude::*;
use std::cmp::Ordering;

/// Indices (absolute, into `row`) of the k largest values of `row[start..end]`. `start`
/// and `end` are clamped to the row.
pub fn topk_row(row: &[f32], start: usize, end: usize, k: usize) -> Vec<i32> {
    let end = end.min(row.len());
    let start = start.min(end);
    let mut cand: Vec<(f32, usize)> = (start..end)
        .filter(|&i| !row[i].is_nan() && row[i] != f32::NEG_INFINITY)
        .map(|i| (row[i], i))
        .collect();
    let by_rank = |a: &(f32, usize), b: &(f32, usize)| -> Ordering {
        b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1))
    };
    if cand.len() > k && k > 0 {
        cand.select_nth_unstable_by(k - 1, by_rank);
    }
    cand.truncate(k);
    cand.sort_unstable_by(by_rank);
    let mut out: Vec<i32> = cand.iter().map(|&(_, i)| i as i32).collect();
    out.resize(k, -1);
    out
}

/// Row-wise [`topk_row`]: row `r` is `logits[r * stride .. r * stride + stride]` with
/// range `[starts[r], ends[r])` (negative starts count as 0). Returns `[rows, k]` int32.
pub fn topk_rows(
    logits: &[f32],
    rows: usize,
    stride: usize,
    starts: &[i32],
    ends: &[i32],
    k: usize,
) -> Vec<i32> {
    assert!(
        starts.len() >= rows && ends.len() >= rows,
        "one range per row"
    );
    assert!(
        logits.len() >= rows * stride,
        "logits must hold rows * stride values"
    );
    (0..rows)
        .into_par_iter()
        .flat_map_iter(|r| {
            topk_row(
                &logits[r * stride..(r + 1) * stride],
                starts[r].max(0) as usize,
                ends[r].max(0) as usize,
                k,
            )
        })
        .collect()
}

/// Translates logical token indices of one sequence to physical slots:
/// `block_table_row[i / 64] * 64 + i % 64`; negative indices (padding) become `-1`.
pub fn translate_to_slots(indices: &[i32], block_table_row: &[i32]) -> Vec<i32> {
    indices
        .iter()
        .map(|&i| {
            if i < 0 {
                -1
            } else {
                let i = i as usize;
                block_table_row[i / PAGE_SIZE] * PAGE_SIZE as i32 + (i % PAGE_SIZE) as i32
            }
        })
        .collect()
}

/// [`translate_to_slots`] for `[b * next_n, k]` top-k rows of the paged decode path: row
/// `r` belongs to sequence `r / next_n`, whose block-table row is `block_table[(r /
/// next_n) * max_pages ..][..max_pages]`.
pub fn translate_rows_to_slots(
    indices: &[i32],
    k: usize,
    block_table: &[i32],
    max_pages: usize,
    next_n: usize,
) -> Vec<i32> {
    indices
        .chunks(k.max(1))
        .enumerate()
        .flat_map(|(r, row)| {
            let b = r / next_n;
            translate_to_slots(row, &block_table[b * max_pages..(b + 1) * max_pages])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_order_and_padding() {
        let ninf = f32::NEG_INFINITY;
        let row = [1.0, 3.0, 3.0, f32::NAN, ninf, 2.0, 3.0, f32::INFINITY];
        assert_eq!(topk_row(&row, 0, 8, 3), vec![7, 1, 2]);
        assert_eq!(topk_row(&row, 0, 7, 4), vec![1, 2, 6, 5]);
        assert_eq!(topk_row(&row, 2, 7, 6), vec![2, 6, 5, -1, -1, -1]);
        assert_eq!(topk_row(&row, 3, 5, 2), vec![-1, -1]);
        assert_eq!(topk_row(&row, 0, 8, 0), Vec::<i32>::new());
        assert_eq!(topk_row(&row, 5, 100, 1), vec![7]);
    }

    #[test]
    fn rows_and_translation() {
        let logits = [0.0, 1.0, 2.0, 5.0, 4.0, 3.0];
        let out = topk_rows(&logits, 2, 3, &[0, 1], &[2, 3], 2);
        assert_eq!(out, vec![1, 0, 1, 2]);
        let bt = [7, 3];
        assert_eq!(
            translate_to_slots(&[0, 65, -1, 63], &bt),
            vec![448, 193, -1, 511]
        );
        let rows = translate_rows_to_slots(&[0, -1, 1, 64], 2, &[1, 2, 3, 4], 2, 1);
        assert_eq!(rows, vec![64, -1, 193, 256]);
    }
}
