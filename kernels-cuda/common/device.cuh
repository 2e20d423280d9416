// The Hopper device layer, all of it: PTX wrappers, warpgroup MMA, numeric helpers.
#pragma once
#include "block.cuh"
#include "numeric.cuh"
#include "ptx.cuh"
#include "wgmma.cuh"
