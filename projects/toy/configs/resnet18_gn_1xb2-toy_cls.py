_base_ = './resnet18_gn_1xb1-toy_cls.py'
train_dataloader = dict(batch_size=2)
