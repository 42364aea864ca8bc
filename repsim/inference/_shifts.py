"""All cyclic shifts at once: S(s) = sum_ij A_ij B_{(i+s)%n, (j+s)%n} for every s in O(n^2 log n).

Writing j = (i + d) % n, S(s) = sum_d sum_i a_d(i) b_d(i + s) with the "wrapped diagonals"
a_d(i) = A[i, (i+d)%n], b_d(i) = B[i, (i+d)%n]: a circular cross-correlation per diagonal, so
S = IFFT(sum_d conj(FFT a_d) * FFT b_d). Likewise sum_i u_i v_{(i+s)%n} for vectors.
"""

from __future__ import annotations

import torch
from torch import Tensor


def wrapped_diagonals(a: Tensor) -> Tensor:
    """(n, n) with row d = (A[i, (i+d) % n])_i."""
    n = a.shape[0]
    i = torch.arange(n, device=a.device)
    cols = (i[None, :] + i[:, None]) % n  # [d, i] -> (i + d) % n
    return a[i[None, :].expand(n, n), cols]


def shifted_quadratic(a: Tensor, b: Tensor) -> Tensor:
    """S(s) = sum_ij A_ij B_{(i+s)%n,(j+s)%n} for s = 0..n-1 (float64)."""
    n = a.shape[0]
    fa = torch.fft.rfft(wrapped_diagonals(a.to(torch.float64)), dim=1)
    fb = torch.fft.rfft(wrapped_diagonals(b.to(torch.float64)), dim=1)
    return torch.fft.irfft((fa.conj() * fb).sum(0), n=n)


def shifted_dot(u: Tensor, v: Tensor) -> Tensor:
    """sum_i u_i v_{(i+s)%n} for s = 0..n-1 (float64)."""
    n = u.shape[0]
    return torch.fft.irfft(torch.fft.rfft(u.to(torch.float64)).conj() * torch.fft.rfft(v.to(torch.float64)), n=n)
