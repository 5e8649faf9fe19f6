"""Image classifiers (the brain-tumour toolkit): a small CNN, VGG16, ResNet-50, EfficientNetV2-S and ConvNeXt-T with
torchvision's exact parameter counts, each ending in a replaceable `head` Dense layer of `num_classes`;
`port` imports torchvision (or Hugging Face) PyTorch state dicts."""
from jaxdiff.models.classifiers import cnn, convnext, efficientnet, resnet, vgg  # noqa: F401  (registers)
