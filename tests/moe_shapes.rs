//! CPU checks of the MoE shapes: sizes, the worst-case row capacity, and the `Err`s of
//! bad shapes and routing rules (no device needed: every check runs before a launch).
use dsa_kernels::moe::{Align, MoeLayout, MoeShape, RouteConfig};
use dsa_kernels::DsaError;
use dsa_reference::moe as rm;
use proptest::prelude::*;

fn shape() -> MoeShape {
    MoeShape {
        tokens: 100,
        hidden: 256,
        inter: 128,
        experts: 16,
        top_k: 4,
        align: Align::A128,
        layout: MoeLayout::Contiguous,
        ue8m0: false,
    }
}

#[test]
fn sizes_follow_the_contract() {
    let s = shape();
    s.validate().unwrap();
    // round_up(T k + E (align - 1), align)
    assert_eq!(
        s.rows().unwrap(),
        (400usize + 16 * 127).next_multiple_of(128)
    );
    assert_eq!(s.scale_stride().unwrap() % 4, 0);
    assert_eq!(s.a1_len().unwrap(), s.rows().unwrap() * 256);
    assert_eq!(s.sfa1_len().unwrap(), 2 * s.scale_stride().unwrap());
    assert_eq!(s.h_len().unwrap(), s.rows().unwrap() * 256);
    assert_eq!(s.a2_len().unwrap(), s.rows().unwrap() * 128);
    let a64 = MoeShape {
        align: Align::A64,
        ..s
    };
    assert_eq!(
        a64.rows().unwrap(),
        (400usize + 16 * 63).next_multiple_of(64)
    );
    let m = MoeShape {
        layout: MoeLayout::Masked { max_m: 192 },
        ..s
    };
    assert_eq!(m.rows().unwrap(), 16 * 192);
    assert_eq!(m.sfa1_len().unwrap(), 16 * 2 * 192);
    assert_eq!(m.scale_stride().unwrap(), 192);
    let dsv3 = MoeShape::deepseek_v3(1);
    // T = 1: 8 + 256 * 127 rows, rounded to 128 (the worst case).
    assert_eq!(dsv3.rows().unwrap(), 32640);
    assert!(dsv3.plan_len().unwrap() >= 2 * 32640);
    MoeShape::deepseek_v3(0).validate().unwrap();
}

#[test]
fn bad_shapes_are_errors() {
    let s = shape();
    let unsupported = |s: MoeShape| matches!(s.validate(), Err(DsaError::Unsupported { .. }));
    assert!(unsupported(MoeShape { experts: 0, ..s }));
    assert!(unsupported(MoeShape { experts: 1025, ..s }));
    assert!(unsupported(MoeShape { top_k: 0, ..s }));
    assert!(unsupported(MoeShape {
        top_k: 33,
        experts: 64,
        ..s
    }));
    // More slots per token than experts is a valid plan shape (the expert-parallel
    // dispatch plans over ranks), but no routing can pick 17 distinct experts of 16.
    assert!(MoeShape { top_k: 17, ..s }.validate().is_ok());
    assert!(RouteConfig::DEEPSEEK_V3
        .validate(&MoeShape { top_k: 17, ..s })
        .is_err());
    assert!(unsupported(MoeShape { hidden: 200, ..s }));
    assert!(unsupported(MoeShape { inter: 0, ..s }));
    assert!(unsupported(MoeShape {
        layout: MoeLayout::Masked { max_m: 100 },
        ..s
    }));
    assert!(unsupported(MoeShape {
        layout: MoeLayout::Masked { max_m: 0 },
        ..s
    }));
    // Sizes past the 32-bit row space or usize are capacity errors, never wrapped.
    let huge = MoeShape {
        tokens: usize::MAX / 2,
        ..s
    };
    assert!(matches!(huge.validate(), Err(DsaError::Capacity { .. })));
    let rows_past_i32 = MoeShape {
        tokens: 600_000_000,
        ..s
    };
    assert!(matches!(
        rows_past_i32.validate(),
        Err(DsaError::Capacity { .. })
    ));
    let masked_past_i32 = MoeShape {
        experts: 1024,
        layout: MoeLayout::Masked { max_m: 1 << 22 },
        ..s
    };
    assert!(matches!(
        masked_past_i32.validate(),
        Err(DsaError::Capacity { .. })
    ));
}

#[test]
fn bad_routing_rules_are_errors() {
    let s = shape();
    let ok = RouteConfig {
        n_group: 4,
        topk_group: 2,
        renormalize: true,
        route_scale: 2.5,
    };
    ok.validate(&s).unwrap();
    RouteConfig::DEEPSEEK_V3
        .validate(&MoeShape::deepseek_v3(4))
        .unwrap();
    for bad in [
        RouteConfig { n_group: 0, ..ok },
        RouteConfig { n_group: 3, ..ok },
        RouteConfig { n_group: 64, ..ok },
        RouteConfig {
            topk_group: 0,
            ..ok
        },
        RouteConfig {
            topk_group: 5,
            ..ok
        },
        // 1 kept group of 4 experts cannot give top_k = 4 + 1.
        RouteConfig {
            topk_group: 1,
            ..ok
        },
        RouteConfig {
            route_scale: f32::NAN,
            ..ok
        },
    ] {
        let s5 = MoeShape { top_k: 5, ..s };
        let r = if bad.topk_group == 1 {
            bad.validate(&s5)
        } else {
            bad.validate(&s)
        };
        assert!(matches!(r, Err(DsaError::Unsupported { .. })), "{bad:?}");
    }
}

proptest! {
    /// No routing needs more rows than the contiguous capacity, at either alignment.
    #[test]
    fn contiguous_capacity_is_the_worst_case(
        t in 0usize..300,
        e in 1usize..40,
        k in 1usize..9,
        a64: bool,
        hot in 0usize..3,
        seed: u64,
    ) {
        let k = k.min(e);
        let align = if a64 { Align::A64 } else { Align::A128 };
        let s = MoeShape { tokens: t, experts: e, top_k: k, align, ..shape() };
        let mut x = seed | 1;
        let ids: Vec<i32> = (0..t * k)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                match hot {
                    0 => (x % e as u64) as i32,
                    1 => (i % k) as i32,
                    _ => ((i % k) * (e / k)) as i32,
                }
            })
            .collect();
        let l = rm::permute_contiguous(&ids, k, e, align.rows());
        prop_assert!(*l.offsets.last().unwrap() <= s.rows().unwrap());
    }
}
