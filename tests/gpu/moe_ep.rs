//! The expert-parallel MoE layer ([`ExpertParallelMoe`], feature `nccl`) on one rank: an
//! NCCL communicator of one GPU (device 0), so the dispatch and the return are NCCL
//! send/recv of every message to the rank itself, and every exchange kernel runs.
//!
//! With one rank the received rows of each expert are its slots in slot order at the
//! same masked rows as the single-GPU [`MoeLayer`] with the same `max_m`, so the outputs
//! must be equal bit for bit (and, past `max_m`, the same slots dropped). The reference
//! layer is checked too, with the tolerance of tests/gpu/moe_layer.rs (the kernels
//! accumulate in f32, the reference in f64). Runs with several ranks need several GPUs:
//! the CPU simulation (tests/expert_parallel.rs) covers their bookkeeping.
use dsa_kernels::cudarc::nccl::Comm;
use dsa_kernels::moe::{Align, ExpertParallelMoe, MoeLayer, MoeLayout, MoeShape};
use dsa_kernels::DsaKernels;
use half::bf16;

use crate::common::{download, kernels, max_rel_err, upload};
use crate::moe_layer::{shape, Setup, MAX_REL};

fn padded<T: Clone>(mut v: Vec<T>, fill: T) -> Vec<T> {
    if v.is_empty() {
        v.push(fill);
    }
    v
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn one_rank_expert_parallel_equals_moe_layer() {
    kernels(); // fails the test without a usable device
               // A stream of its own rather than the legacy default stream for NCCL.
    let ctx = dsa_kernels::device::open_device(0).expect("CUDA device");
    let s = ctx.new_stream().unwrap();
    let k = DsaKernels::new(s.clone()).unwrap();
    let comm = Comm::from_devices(vec![s.clone()])
        .expect("an NCCL communicator on device 0 (is libnccl.so.2 on LD_LIBRARY_PATH?)")
        .pop()
        .expect("one communicator");
    let max_tokens = 200usize;
    // (tokens, max_m (None: never drop), ue8m0, shared expert width)
    let cases: [(usize, Option<usize>, bool, Option<usize>); 6] = [
        (77, None, false, Some(128)),
        (1, None, true, Some(256)),
        (0, None, false, Some(128)),
        (200, None, false, None),
        (150, None, true, Some(128)),
        (200, Some(64), false, Some(128)),
    ];
    for (i, (t, max_m, ue8m0, shared)) in cases.into_iter().enumerate() {
        // The single-GPU layer with the max_m the expert-parallel layer uses.
        let ep_max_m = max_m.unwrap_or(max_tokens.next_multiple_of(64));
        let sh: MoeShape = shape(t, MoeLayout::Masked { max_m: ep_max_m }, Align::A64, ue8m0);
        let setup = Setup::new(&s, sh, shared, 40 + i as u64);
        let mut layer = MoeLayer::new(&s, &sh, &setup.cfg, shared).unwrap();
        let mut ep =
            ExpertParallelMoe::new(&comm, &sh, &setup.cfg, max_tokens, max_m, shared).unwrap();
        assert_eq!(ep.local_experts(), 0..sh.experts);
        let (logits, x) = setup.inputs(200 + i as u64);
        let l_dev = upload(&s, &padded(logits.clone(), 0.0));
        let x_dev = upload(&s, &padded(x.clone(), bf16::ZERO));
        let n = (t * sh.hidden).max(8);
        let mut want = upload(&s, &vec![bf16::NAN; n]);
        let mut got = upload(&s, &vec![bf16::NAN; n]);
        let w = setup.weights();
        layer.forward(&k, &w, &l_dev, &x_dev, &mut want).unwrap();
        ep.forward(&k, &comm, &w, &l_dev, &x_dev, &mut got).unwrap();
        let first = download(&s, &got);
        s.memcpy_htod(&vec![bf16::NAN; n], &mut got).unwrap();
        ep.forward(&k, &comm, &w, &l_dev, &x_dev, &mut got).unwrap();
        let second = download(&s, &got);
        let want = download(&s, &want);
        let bits = |v: &[bf16]| {
            v[..t * sh.hidden]
                .iter()
                .map(|x| x.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&first), bits(&second), "case {i}: two runs differ");
        let differ = bits(&first)
            .iter()
            .zip(bits(&want))
            .filter(|(a, b)| **a != *b)
            .count();
        let layer_status = s.clone_dtoh(&layer.plan().status()).unwrap();
        let ep_status = s.clone_dtoh(&ep.receive_plan().status()).unwrap();
        let f = |v: &[bf16]| {
            v[..t * sh.hidden]
                .iter()
                .map(|x| x.to_f32())
                .collect::<Vec<_>>()
        };
        let err_layer = if t > 0 {
            max_rel_err(&f(&first), &f(&want))
        } else {
            0.0
        };
        eprintln!(
            "expert-parallel one rank, case {i} (T={t}, max_m={ep_max_m}, ue8m0={ue8m0}, \
             shared={shared:?}): {differ} of {} outputs differ from MoeLayer (max rel {err_layer:.3e}), \
             overflow {} (MoeLayer {})",
            t * sh.hidden,
            ep_status[0],
            layer_status[0]
        );
        assert_eq!(
            ep_status[0], layer_status[0],
            "case {i}: overflow flags differ"
        );
        assert_eq!(differ, 0, "case {i}: not bit-equal to MoeLayer");
        if max_m.is_none() && t > 0 {
            assert_eq!(
                ep_status[0], 0,
                "case {i}: dropped rows with the no-drop max_m"
            );
            let err = max_rel_err(&f(&first), &setup.reference(&logits, &x));
            eprintln!("  vs the reference layer: max rel err {err:.3e}");
            assert!(err <= MAX_REL, "case {i}: max rel err {err:.3e}");
        }
    }
}
