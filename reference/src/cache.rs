//! Byte layouts of the paged caches (spec section 2), and their reference encoders and
//! decoders. Every paged cache uses pages of [`PAGE_SIZE`] tokens; a token's physical
//! slot is `page_id * 64 + offset`.
//!
//! * **MLA FP8 cache**, [`MLA_FP8_BYTES_PER_TOKEN`] = 656 bytes per token, a page is
//!   64 x 656 contiguous bytes. Per token: bytes 0..512 the 512 e4m3 latent codes;
//!   512..528 four little-endian f32 scales (scale k covers latent values
//!   128k..128k+128, dequantized value = e4m3 x scale); 528..656 the 64 RoPE values as
//!   little-endian bf16, unquantized.
//! * **MLA bf16 cache**, `[pages, 64, 576]` bf16: latent 512 first, RoPE 64 last.
//! * **Indexer K cache**, [`INDEXER_BYTES_PER_TOKEN`] = 132 bytes per token but laid out
//!   per page: page `p` starts at byte `p * 8448`; first the 64 x 128 e4m3 codes of its
//!   tokens (8192 bytes, token `o` at `p * 8448 + o * 128`), then the 64 f32 LE scales
//!   (token `o` at `p * 8448 + 8192 + 4 * o`).

use crate::fp8;
use half::bf16;

/// Tokens per page of every paged cache.
pub const PAGE_SIZE: usize = 64;
/// Latent (c_kv) width of MLA.
pub const KV_LORA_RANK: usize = 512;
/// RoPE width of the MLA key.
pub const ROPE_DIM: usize = 64;
/// Width of one MLA cache entry: latent 512 + RoPE 64.
pub const MLA_DIM: usize = KV_LORA_RANK + ROPE_DIM;
/// Bytes per token of the MLA FP8 cache.
pub const MLA_FP8_BYTES_PER_TOKEN: usize = 656;
/// Bytes per page of the MLA FP8 cache.
pub const MLA_FP8_PAGE_BYTES: usize = PAGE_SIZE * MLA_FP8_BYTES_PER_TOKEN;
/// Width of one indexer key.
pub const INDEXER_DIM: usize = 128;
/// Bytes per token of the indexer K cache (128 codes + one f32 scale).
pub const INDEXER_BYTES_PER_TOKEN: usize = 132;
/// Bytes per page of the indexer K cache.
pub const INDEXER_PAGE_BYTES: usize = PAGE_SIZE * INDEXER_BYTES_PER_TOKEN;
/// Values per FP8 scale block.
pub const QUANT_BLOCK: usize = 128;

const SCALES_OFFSET: usize = KV_LORA_RANK;
const ROPE_OFFSET: usize = KV_LORA_RANK + 4 * (KV_LORA_RANK / QUANT_BLOCK);

/// Encodes one MLA cache entry (`kv`: 576 bf16, latent 512 then RoPE 64) into the 656-byte
/// FP8 token layout. Each 128-value latent block gets `scale = max(amax, 1e-4) / 448`
/// (not rounded to a power of two) and codes `e4m3(x / scale)`. Panics if `kv.len() != 576`.
pub fn encode_mla_fp8_token(kv: &[bf16]) -> [u8; MLA_FP8_BYTES_PER_TOKEN] {
    encode_mla_fp8_token_with(kv, false)
}

/// [`encode_mla_fp8_token`] with the power-of-two (UE8M0) scale option.
pub fn encode_mla_fp8_token_with(kv: &[bf16], pow2_scale: bool) -> [u8; MLA_FP8_BYTES_PER_TOKEN] {
    assert_eq!(kv.len(), MLA_DIM, "MLA cache entry must have 576 values");
    let mut out = [0u8; MLA_FP8_BYTES_PER_TOKEN];
    for blk in 0..KV_LORA_RANK / QUANT_BLOCK {
        let x: Vec<f32> = kv[blk * QUANT_BLOCK..(blk + 1) * QUANT_BLOCK]
            .iter()
            .map(|v| v.to_f32())
            .collect();
        let (codes, scale) = fp8::quantize_block(&x, pow2_scale);
        out[blk * QUANT_BLOCK..(blk + 1) * QUANT_BLOCK].copy_from_slice(&codes);
        out[SCALES_OFFSET + 4 * blk..SCALES_OFFSET + 4 * blk + 4]
            .copy_from_slice(&scale.to_le_bytes());
    }
    for (i, v) in kv[KV_LORA_RANK..].iter().enumerate() {
        out[ROPE_OFFSET + 2 * i..ROPE_OFFSET + 2 * i + 2].copy_from_slice(&v.to_le_bytes());
    }
    out
}

/// Decodes a 656-byte FP8 token into its 576 values: latent `e4m3 * scale` (one f32
/// product, as written) then the 64 RoPE bf16 values widened to f32. Kernels that
/// dequantize into bf16 before the MMA round these values once more. Panics if
/// `bytes.len() < 656`.
pub fn decode_mla_fp8_token(bytes: &[u8]) -> Vec<f32> {
    assert!(
        bytes.len() >= MLA_FP8_BYTES_PER_TOKEN,
        "an FP8 MLA token has 656 bytes"
    );
    let mut out = Vec::with_capacity(MLA_DIM);
    for blk in 0..KV_LORA_RANK / QUANT_BLOCK {
        let o = SCALES_OFFSET + 4 * blk;
        let scale = f32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        out.extend(
            bytes[blk * QUANT_BLOCK..(blk + 1) * QUANT_BLOCK]
                .iter()
                .map(|&c| fp8::e4m3_to_f32(c) * scale),
        );
    }
    for i in 0..ROPE_DIM {
        let o = ROPE_OFFSET + 2 * i;
        out.push(bf16::from_le_bytes([bytes[o], bytes[o + 1]]).to_f32());
    }
    out
}

/// Writes one token into an MLA FP8 cache (`cache`: pages x 64 x 656 bytes) at physical
/// `slot`. Panics if the slot is outside the cache.
pub fn mla_fp8_cache_write(cache: &mut [u8], slot: usize, kv: &[bf16]) {
    let o = slot * MLA_FP8_BYTES_PER_TOKEN;
    cache[o..o + MLA_FP8_BYTES_PER_TOKEN].copy_from_slice(&encode_mla_fp8_token(kv));
}

/// Reads and decodes the token at physical `slot` of an MLA FP8 cache; `None` if the
/// slot lies outside the cache.
pub fn mla_fp8_cache_read(cache: &[u8], slot: usize) -> Option<Vec<f32>> {
    let o = slot.checked_mul(MLA_FP8_BYTES_PER_TOKEN)?;
    let bytes = cache.get(o..o.checked_add(MLA_FP8_BYTES_PER_TOKEN)?)?;
    Some(decode_mla_fp8_token(bytes))
}

/// Writes one token (576 bf16) into an MLA bf16 cache (`[pages, 64, 576]`) at `slot`.
pub fn mla_bf16_cache_write(cache: &mut [bf16], slot: usize, kv: &[bf16]) {
    assert_eq!(kv.len(), MLA_DIM, "MLA cache entry must have 576 values");
    cache[slot * MLA_DIM..(slot + 1) * MLA_DIM].copy_from_slice(kv);
}

/// Reads the token at `slot` of an MLA bf16 cache as f32; `None` outside the cache.
pub fn mla_bf16_cache_read(cache: &[bf16], slot: usize) -> Option<Vec<f32>> {
    let o = slot.checked_mul(MLA_DIM)?;
    let row = cache.get(o..o.checked_add(MLA_DIM)?)?;
    Some(row.iter().map(|v| v.to_f32()).collect())
}

/// Quantizes one indexer key (128 f32, already RoPE'd and Hadamard-transformed) with
/// the spec 1.2 step 5 rule: amax floored at 1e-4, scale `amax / 448` rounded up to a
/// power of two, codes `e4m3(x / scale)`. Returns `(codes, scale)`.
pub fn encode_indexer_token(k: &[f32]) -> ([u8; INDEXER_DIM], f32) {
    assert_eq!(k.len(), INDEXER_DIM, "an indexer key has 128 values");
    let (codes, scale) = fp8::quantize_block(k, true);
    (codes.try_into().unwrap(), scale)
}

/// Byte offsets `(codes, scale)` of physical `slot` in the per-page indexer layout.
pub fn indexer_slot_offsets(slot: usize) -> (usize, usize) {
    let (page, off) = (slot / PAGE_SIZE, slot % PAGE_SIZE);
    let base = page * INDEXER_PAGE_BYTES;
    (
        base + off * INDEXER_DIM,
        base + PAGE_SIZE * INDEXER_DIM + 4 * off,
    )
}

/// Writes one indexer key (codes + scale) at physical `slot` of an indexer cache
/// (`pages * 8448` bytes). Panics if the slot is outside the cache.
pub fn indexer_cache_write(cache: &mut [u8], slot: usize, k8: &[u8; INDEXER_DIM], scale: f32) {
    let (c, s) = indexer_slot_offsets(slot);
    cache[c..c + INDEXER_DIM].copy_from_slice(k8);
    cache[s..s + 4].copy_from_slice(&scale.to_le_bytes());
}

/// Reads the key codes and scale at physical `slot` of an indexer cache. Panics if the
/// slot is outside the cache.
pub fn indexer_cache_read(cache: &[u8], slot: usize) -> ([u8; INDEXER_DIM], f32) {
    let (c, s) = indexer_slot_offsets(slot);
    (
        cache[c..c + INDEXER_DIM].try_into().unwrap(),
        f32::from_le_bytes(cache[s..s + 4].try_into().unwrap()),
    )
}

/// Physical slot of logical token `pos` of a sequence whose block-table row is
/// `block_table_row`: `block_table_row[pos / 64] * 64 + pos % 64`.
pub fn slot_of(block_table_row: &[i32], pos: usize) -> usize {
    let page = block_table_row[pos / PAGE_SIZE];
    assert!(page >= 0, "block table entry for token {pos} is negative");
    page as usize * PAGE_SIZE + pos % PAGE_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seed: u32) -> Vec<bf16> {
        (0..MLA_DIM)
            .map(|i| {
                let v = ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32
                    / (1u32 << 24) as f32;
                bf16::from_f32((v - 0.5) * (1.0 + (i / 128) as f32 * 3.0))
            })
            .collect()
    }

    #[test]
    fn constants() {
        assert_eq!(MLA_FP8_BYTES_PER_TOKEN, 512 + 16 + 128);
        assert_eq!(INDEXER_PAGE_BYTES, 8448);
        assert_eq!(INDEXER_BYTES_PER_TOKEN, 132);
    }

    #[test]
    fn mla_fp8_layout_and_round_trip() {
        let kv = entry(7);
        let bytes = encode_mla_fp8_token(&kv);
        let dec = decode_mla_fp8_token(&bytes);
        for blk in 0..4 {
            let s = f32::from_le_bytes(bytes[512 + 4 * blk..516 + 4 * blk].try_into().unwrap());
            let amax = kv[blk * 128..(blk + 1) * 128]
                .iter()
                .fold(1e-4f32, |m, v| m.max(v.to_f32().abs()));
            assert_eq!(s, amax / 448.0);
            for i in blk * 128..(blk + 1) * 128 {
                let x = kv[i].to_f32();
                assert_eq!(bytes[i], fp8::f32_to_e4m3(x / s));
                // e4m3 has 3 mantissa bits: relative error <= 2^-4, plus the subnormal floor.
                assert!((dec[i] - x).abs() <= x.abs() / 16.0 + s * 2f32.powi(-10));
            }
        }
        for i in 0..64 {
            assert_eq!(dec[512 + i], kv[512 + i].to_f32());
            assert_eq!(
                u16::from_le_bytes([bytes[528 + 2 * i], bytes[529 + 2 * i]]),
                kv[512 + i].to_bits()
            );
        }
    }

    #[test]
    fn caches_by_slot() {
        let mut fp8c = vec![0u8; 3 * MLA_FP8_PAGE_BYTES];
        let mut bfc = vec![bf16::ZERO; 3 * PAGE_SIZE * MLA_DIM];
        let kv = entry(3);
        mla_fp8_cache_write(&mut fp8c, 130, &kv);
        mla_bf16_cache_write(&mut bfc, 130, &kv);
        assert_eq!(
            mla_fp8_cache_read(&fp8c, 130).unwrap(),
            decode_mla_fp8_token(&encode_mla_fp8_token(&kv))
        );
        let row = mla_bf16_cache_read(&bfc, 130).unwrap();
        assert!(row.iter().zip(&kv).all(|(a, b)| *a == b.to_f32()));
        assert!(mla_fp8_cache_read(&fp8c, 192).is_none());
        assert!(mla_bf16_cache_read(&bfc, 192).is_none());
    }

    #[test]
    fn indexer_page_layout() {
        let mut cache = vec![0u8; 2 * INDEXER_PAGE_BYTES];
        let k: Vec<f32> = (0..128).map(|i| (i as f32 - 64.0) / 10.0).collect();
        let (k8, s) = encode_indexer_token(&k);
        assert_eq!(s.to_bits() & 0x007f_ffff, 0, "power-of-two scale");
        indexer_cache_write(&mut cache, 64 + 5, &k8, s);
        assert_eq!(&cache[8448 + 5 * 128..8448 + 6 * 128], &k8[..]);
        assert_eq!(
            f32::from_le_bytes(
                cache[8448 + 8192 + 20..8448 + 8192 + 24]
                    .try_into()
                    .unwrap()
            ),
            s
        );
        assert_eq!(indexer_cache_read(&cache, 69), (k8, s));
    }

    #[test]
    fn slot_translation() {
        assert_eq!(slot_of(&[5, 2], 0), 320);
        assert_eq!(slot_of(&[5, 2], 70), 134);
    }
}
