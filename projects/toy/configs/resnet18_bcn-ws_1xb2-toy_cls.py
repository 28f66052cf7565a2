_base_ = './resnet18_bcn-ws_1xb1-toy_cls.py'
train_dataloader = dict(batch_size=2)
