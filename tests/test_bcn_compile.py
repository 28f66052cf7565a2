"""A compiled ResNet-18 with BCN+WS trains as the eager one: five SGD steps over three input
sizes (a detector's input size changes every step), float64, compared step by step."""
import copy

import torch

from mmws import BCN


def resnet18_bcn_ws() -> torch.nn.Module:
    from mmdet.models.backbones import ResNet
    torch.manual_seed(0)
    model = ResNet(depth=18, num_stages=4, out_indices=(3, ), frozen_stages=-1,
                   conv_cfg=dict(type='mmws.ConvWS'),
                   norm_cfg=dict(type='mmws.BCN', num_groups=8, momentum=0.3), norm_eval=False)
    model.init_weights()
    model.double().train()  # mmdet's ResNet.train returns None
    return model


def test_compiled_resnet18_bcn_ws_equals_eager_over_steps_and_sizes():
    torch._dynamo.reset()
    eager = resnet18_bcn_ws()
    twin = copy.deepcopy(eager)
    # AOTAutograd's decompositions and min-cut partitioner (where a backward could re-read
    # updated buffers), without inductor's code generation: seconds, not minutes, on a CPU.
    compiled = torch.compile(twin, backend='aot_eager_decomp_partition')
    optimizers = [torch.optim.SGD(model.parameters(), lr=0.05) for model in (eager, twin)]
    gen = torch.Generator().manual_seed(0)
    sizes = [(2, 32, 32), (1, 40, 36), (2, 48, 40), (2, 32, 32), (1, 40, 36)]
    for step, (batch, height, width) in enumerate(sizes):
        x = torch.randn(batch, 3, height, width, generator=gen, dtype=torch.float64)
        outputs = []
        for model, optimizer in zip((eager, compiled), optimizers):
            out = model(x)[-1]
            (out * out.detach().sin()).sum().backward()
            outputs.append(out.detach())
        torch.testing.assert_close(outputs[1], outputs[0], msg=lambda m: f'step {step}: {m}')
        for (name, param), twin_param in zip(eager.named_parameters(), twin.parameters()):
            torch.testing.assert_close(twin_param.grad, param.grad,
                                       msg=lambda m: f'step {step} {name}: {m}')
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad()
        for (name, buffer), twin_buffer in zip(eager.named_buffers(), twin.buffers()):
            torch.testing.assert_close(twin_buffer, buffer, msg=name)
    bcns = [m for m in twin.modules() if isinstance(m, BCN)]
    assert bcns and all(int(m.num_batches_tracked) == len(sizes) for m in bcns)
