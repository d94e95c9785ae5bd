/* The table of layer kinds graft runs, looked up by Keras class name. */
#include <string.h>

#include "layers/layer.h"

extern const graft__layer_ops graft__input_layer_ops, graft__conv2d_layer_ops,
    graft__depthwise_conv2d_layer_ops, graft__separable_conv2d_layer_ops,
    graft__batch_norm_layer_ops, graft__relu_layer_ops, graft__activation_layer_ops,
    graft__zero_padding2d_layer_ops, graft__add_layer_ops, graft__multiply_layer_ops,
    graft__concatenate_layer_ops, graft__max_pooling2d_layer_ops,
    graft__average_pooling2d_layer_ops, graft__global_average_pooling2d_layer_ops,
    graft__global_max_pooling2d_layer_ops, graft__flatten_layer_ops, graft__reshape_layer_ops,
    graft__dense_layer_ops, graft__dropout_layer_ops, graft__rescaling_layer_ops;

static const graft__layer_ops *const kinds[] = {
    &graft__input_layer_ops,
    &graft__conv2d_layer_ops,
    &graft__depthwise_conv2d_layer_ops,
    &graft__separable_conv2d_layer_ops,
    &graft__batch_norm_layer_ops,
    &graft__relu_layer_ops,
    &graft__activation_layer_ops,
    &graft__zero_padding2d_layer_ops,
    &graft__add_layer_ops,
    &graft__multiply_layer_ops,
    &graft__concatenate_layer_ops,
    &graft__max_pooling2d_layer_ops,
    &graft__average_pooling2d_layer_ops,
    &graft__global_average_pooling2d_layer_ops,
    &graft__global_max_pooling2d_layer_ops,
    &graft__flatten_layer_ops,
    &graft__reshape_layer_ops,
    &graft__dense_layer_ops,
    &graft__dropout_layer_ops,
    &graft__rescaling_layer_ops,
};

_Static_assert(sizeof kinds / sizeof kinds[0] == 20, "every layer kind is registered once");

/* Other names Keras and TF.js use for the same kinds. */
static const struct {
    const char *alias, *class_name;
} aliases[] = {
    {"Convolution2D", "Conv2D"},
    {"SeparableConvolution2D", "SeparableConv2D"},
    {"MaxPool2D", "MaxPooling2D"},
    {"AvgPool2D", "AveragePooling2D"},
    {"GlobalAvgPool2D", "GlobalAveragePooling2D"},
    {"GlobalMaxPool2D", "GlobalMaxPooling2D"},
};

const graft__layer_ops *graft__layer_ops_find(const char *class_name)
{
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
        if (strcmp(class_name, aliases[i].alias) == 0)
            class_name = aliases[i].class_name;
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (strcmp(kinds[i]->class_name, class_name) == 0)
            return kinds[i];
    return NULL;
}
