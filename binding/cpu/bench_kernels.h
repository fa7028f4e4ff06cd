// What `nysact bench` measures besides the backend's own kernels: the machine's peaks (SGEMM rate,
// copy bandwidth) and the dense reference formulations of SPEC §1 (the baselines of SPEC §2).
// Plain C++, no Node headers.  Everything runs on the CPU backend's OpenMP threads, with the same
// Eigen build and -march as the backend, so "fraction of peak" compares like with like.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "../backend.h"

namespace nysact {
namespace cpu {

// C = A·B with n x n float matrices, output column blocks split across the threads.  One untimed
// warm-up, then `repeats` timed products; returns the seconds of each (2·n³ flops each).
std::vector<double> probeSgemm(int64_t n, int repeats);

// memcpy of `bytes` between two buffers touched beforehand, split across the threads.  One untimed
// warm-up, then `repeats` timed copies; returns the seconds of each (2·bytes moved each).
std::vector<double> probeCopy(size_t bytes, int repeats);

// Reference dense sketch (SPEC §1 as the reference code runs it): X̃ = [x, 1] is materialised
// when there is a bias, then C = X̃ᵀ (X̃ S) / rows by two library products.  S is p x k row-major.
void referenceDenseSketch(const float* x, int64_t rows, int64_t p0, bool bias, const float* sketch,
                          int64_t k, float* covariance);

// Reference conv sketch: builds the explicit im2col patch matrix (rows = batch·outH·outW, patch
// columns in (kh, kw, c) order, ones column last iff bias), then the same two products.
void referenceIm2colSketch(const float* x, const LayerSpec& spec, const ConvInput& input,
                           const float* sketch, int64_t k, float* covariance);

// Reference preconditioner: the dense p x p matrix P = I/ρ + U diag(c) Uᵀ (equal to SPEC §1's
// U diag(1/(λ̂+ρ)) Uᵀ + (I − UUᵀ)/ρ with c = 1/(λ̂+ρ) − 1/ρ).  U is p x k row-major, P row-major.
void referenceDensePreconditioner(const float* basis, const float* coefficients, int64_t p, int64_t k,
                                  double inverseDamping, float* preconditioner);

// Reference step (tfjs layout, weight and bias jointly as one p x q matrix, bias row last):
// V = P G, then d = V + wd·θ; buf = μ·buf + d; θ ← θ − lr·buf (SPEC §1 step 3, coupled decay).
void referenceDenseStep(const float* preconditioner, int64_t p, int64_t q, float* weight,
                        const float* grad, float* momentum, const StepScalars& s);

}  // namespace cpu
}  // namespace nysact
