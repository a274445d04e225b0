"On real photos (the CIFAR-10 subset beside the repository): a short SimSiam pretrain beats a random-init encoder."
import pytest
import torch
from conftest import shared_data
from nasiam.data import load_dataset
from nasiam.frameworks import build_model
from nasiam.train import RunConfig, pretrain, evaluate_run, evaluate_model, seed_everything

SUBSET = shared_data('cifar10-subset')
EPOCHS = 3


@pytest.mark.slow
@pytest.mark.skipif(SUBSET is None, reason='../shared/data/cifar10-subset is not here (it only ships beside the repository)')
def test_simsiam_beats_random_init_on_cifar10_subset(tmp_path):
    data = load_dataset('imagefolder', SUBSET)
    c = RunConfig(framework='simsiam', heads='genotype', genotype='simsiam-cifar10-resnet18', dataset='imagefolder',
                  data_dir=str(SUBSET), backbone='resnet_mini', epochs=EPOCHS, batch_size=256, device='cpu',
                  knn_every=0, log_every=5, seed=0)
    pretrain(c, tmp_path / 'run', progress=False, data=data)
    trained = evaluate_run(tmp_path / 'run', 'knn', device='cpu', data=data)
    seed_everything(0)
    random_init = build_model('simsiam', 'genotype', 'resnet_mini', 'simsiam-cifar10-resnet18').eval()
    baseline = evaluate_model(random_init, data, 'knn', k=200)
    print(f"kNN top-1 on the subset's test images: trained {trained['top1']:.1f}%, random init {baseline['top1']:.1f}%")
    assert trained['top1'] > baseline['top1'] + 1.0
