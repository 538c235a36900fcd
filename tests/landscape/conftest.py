"""The landscape tests run tiny models: one thread each, since starting a thread pool for a product of
a few dozen numbers costs 30x the product on a loaded machine."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
