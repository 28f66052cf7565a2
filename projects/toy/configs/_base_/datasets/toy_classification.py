# The embedded toy classification data (mmws_toy.ToyShapeClassification): 64 px crops of the toy
# scenes in five classes (background and the four shapes), 2500 train and 500 val images,
# written to data/toy_cls of this repository on first use; evaluated with top-1 accuracy
# (mmws_toy.Accuracy).
dataset_type = 'mmws_toy.ToyShapeClassification'
# Anchored at the repository (not the working directory): every run finds the same data.
data_root = '{{fileDirname}}/../../../../../data/toy_cls/'
train_pipeline = [
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='mmws_toy.PackClsInputs')
]
test_pipeline = [dict(type='mmws_toy.PackClsInputs')]
# Single-process loading: the crops are in memory and CPU cores are better spent on the model.
train_dataloader = dict(
    batch_size=32,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, split='train', pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=100,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, split='val', pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='mmws_toy.Accuracy')
test_evaluator = val_evaluator
