//! Host encoders producing the exact bytes the cache-write kernels store.
use half::bf16;

use super::CacheLayout;
use super::{INDEXER_DIM, KV_LORA_RANK, MLA_FP8_BYTES_PER_TOKEN, PAGE_SIZE, QK_DIM};
use crate::error::{DsaError, Result};
use crate::fp8::{block_scale, f32_to_e4m3, BLOCK};

/// The 656 bytes of one MLA FP8 cache token from its 576 bf16 values (512 latent, 64 rope).
pub fn encode_mla_fp8_token(
    kv: &[bf16; QK_DIM],
    pow2_scale: bool,
) -> [u8; MLA_FP8_BYTES_PER_TOKEN] {
    let mut out = [0u8; MLA_FP8_BYTES_PER_TOKEN];
    for b in 0..KV_LORA_RANK / BLOCK {
        let vals: Vec<f32> = kv[b * BLOCK..(b + 1) * BLOCK]
            .iter()
            .map(|v| v.to_f32())
            .collect();
        let amax = vals.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = block_scale(amax, pow2_scale);
        for (i, v) in vals.iter().enumerate() {
            out[b * BLOCK + i] = f32_to_e4m3(v / scale);
        }
        out[512 + 4 * b..516 + 4 * b].copy_from_slice(&scale.to_le_bytes());
    }
    for (i, v) in kv[KV_LORA_RANK..].iter().enumerate() {
        out[528 + 2 * i..530 + 2 * i].copy_from_slice(&v.to_bits().to_le_bytes());
    }
    out
}

/// The 128 e4m3 codes and the scale of one indexer key.
pub fn encode_indexer_k_token(
    k: &[bf16; INDEXER_DIM],
    pow2_scale: bool,
) -> ([u8; INDEXER_DIM], f32) {
    let vals: Vec<f32> = k.iter().map(|v| v.to_f32()).collect();
    let amax = vals.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = block_scale(amax, pow2_scale);
    let mut codes = [0u8; INDEXER_DIM];
    for (c, v) in codes.iter_mut().zip(&vals) {
        *c = f32_to_e4m3(v / scale);
    }
    (codes, scale)
}

/// Writes one token's bytes into a host image of a cache (the same layout as the device
/// buffer, viewed as bytes) at `slot`: exactly what the cache-write kernel stores.
/// `values` are the token's bf16 inputs (576 for MLA, 128 for the indexer).
pub fn write_host_token<K: super::CacheKind>(
    image: &mut [u8],
    slot: usize,
    values: &[bf16],
    pow2_scale: bool,
) -> Result<()> {
    if values.len() != K::SRC_DIM {
        return Err(DsaError::Shape {
            what: K::NAME,
            expected: vec![K::SRC_DIM],
            got: vec![values.len()],
        });
    }
    let page_bytes = K::ELEMS_PER_PAGE * std::mem::size_of::<K::Elem>();
    let needed = crate::check::product(K::NAME, &[slot / PAGE_SIZE + 1, page_bytes])?;
    if image.len() < needed {
        return Err(DsaError::Capacity {
            what: K::NAME,
            needed,
            capacity: image.len(),
        });
    }
    let token_bytes = page_bytes / PAGE_SIZE;
    match K::LAYOUT {
        CacheLayout::MlaFp8 => {
            let mut kv = [bf16::ZERO; QK_DIM];
            kv.copy_from_slice(values);
            let t = encode_mla_fp8_token(&kv, pow2_scale);
            image[slot * token_bytes..(slot + 1) * token_bytes].copy_from_slice(&t);
        }
        CacheLayout::MlaBf16 => {
            for (i, v) in values.iter().enumerate() {
                let o = slot * token_bytes + 2 * i;
                image[o..o + 2].copy_from_slice(&v.to_bits().to_le_bytes());
            }
        }
        CacheLayout::IndexerK => {
            let mut k = [bf16::ZERO; INDEXER_DIM];
            k.copy_from_slice(values);
            let (codes, scale) = encode_indexer_k_token(&k, pow2_scale);
            let (page, off) = (slot / PAGE_SIZE, slot % PAGE_SIZE);
            let base = page * page_bytes;
            image[base + off * INDEXER_DIM..base + (off + 1) * INDEXER_DIM].copy_from_slice(&codes);
            let so = base + PAGE_SIZE * INDEXER_DIM + off * 4;
            image[so..so + 4].copy_from_slice(&scale.to_le_bytes());
        }
    }
    Ok(())
}
