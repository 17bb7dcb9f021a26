"""Feature exchanges behave as copies forward and as sums into owners backward."""
import torch

from e2former_lammps.exchange import LocalImages
from e2former_lammps.parallel import KokkosExchange, owner_index


class OwnerMapComm:
    """Implements the documented Kokkos `data.forward_exchange / reverse_exchange` contract
    (LAMMPS's ghost comm) with a known owner map, to test our autograd wrapper on the CPU.
    The real Kokkos build could not be built here (no Kokkos >= 5.1 source)."""

    def __init__(self, owner, nlocal):
        self.owner, self.nlocal = owner, nlocal

    def forward_exchange(self, src, dst, width):
        dst[self.nlocal:] = src[self.owner]

    def reverse_exchange(self, src, dst, width):
        dst[: self.nlocal].index_add_(0, self.owner, src[self.nlocal:])
        dst[self.nlocal:] = 0


def test_owner_index_from_tags():
    tags = torch.tensor([7, 3, 9, 1]).numpy()
    ghosts = torch.tensor([9, 9, 1, 7]).numpy()
    assert owner_index(tags, ghosts).tolist() == [2, 2, 3, 0]


def test_kokkos_exchange_wrapper_matches_local_images():
    gen = torch.Generator().manual_seed(int(torch.seed() % 2**31))
    nlocal, owner = 5, torch.tensor([0, 3, 3, 1, 4, 0])
    x = torch.randn(nlocal, 9, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(nlocal + len(owner), 9, 4, dtype=torch.float64, generator=gen)
    ref = LocalImages(owner, nlocal)(x)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), x)
    ex = KokkosExchange(OwnerMapComm(owner, nlocal), nlocal, nlocal + len(owner))
    out = ex(x)
    (g,) = torch.autograd.grad((out * w).sum(), x)
    assert torch.equal(out, ref) and torch.allclose(g, g_ref, atol=1e-14)
