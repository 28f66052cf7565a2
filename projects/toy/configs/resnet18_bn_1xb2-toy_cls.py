_base_ = './resnet18_bn_1xb1-toy_cls.py'
train_dataloader = dict(batch_size=2)
