/*
 * A PluginFieldCollection as a creator's caller builds it, for the tests: fields added by pointer (the
 * type follows the pointer: int32_t kINT32, int64_t kINT64, float kFLOAT32, double kFLOAT64, char kCHAR),
 * found, changed or dropped by name. The values stay where the caller keeps them. Header-only, so the
 * programs that dlopen the shipped library use it too.
 */
#pragma once

#include "NvInferRuntime.h"

#include <cstring>
#include <vector>

namespace testutil
{

class FieldList
{
public:
    FieldList& add(char const* name, int32_t const* value, int32_t length = 1)
    {
        return add(name, value, nvinfer1::PluginFieldType::kINT32, length);
    }
    FieldList& add(char const* name, int64_t const* value, int32_t length = 1)
    {
        return add(name, value, nvinfer1::PluginFieldType::kINT64, length);
    }
    FieldList& add(char const* name, float const* value, int32_t length = 1)
    {
        return add(name, value, nvinfer1::PluginFieldType::kFLOAT32, length);
    }
    FieldList& add(char const* name, double const* value, int32_t length = 1)
    {
        return add(name, value, nvinfer1::PluginFieldType::kFLOAT64, length);
    }
    FieldList& add(char const* name, char const* value, int32_t length)
    {
        return add(name, value, nvinfer1::PluginFieldType::kCHAR, length);
    }
    FieldList& add(char const* name, void const* value, nvinfer1::PluginFieldType type, int32_t length)
    {
        fields.emplace_back(name, value, type, length);
        return *this;
    }

    //! The field named `name` (a blank field, shared, when there is none).
    nvinfer1::PluginField& field(char const* name)
    {
        for (auto& f : fields)
        {
            if (std::strcmp(f.name, name) == 0)
            {
                return f;
            }
        }
        static nvinfer1::PluginField none;
        return none;
    }

    //! Removes the field named `name`, if any.
    void drop(char const* name)
    {
        for (size_t i = 0; i < fields.size(); ++i)
        {
            if (std::strcmp(fields[i].name, name) == 0)
            {
                fields.erase(fields.begin() + static_cast<long>(i));
                return;
            }
        }
    }

    //! The collection over `fields` as they are now (valid until `fields` changes).
    nvinfer1::PluginFieldCollection const* collection()
    {
        mCollection.nbFields = static_cast<int32_t>(fields.size());
        mCollection.fields = fields.data();
        return &mCollection;
    }

    std::vector<nvinfer1::PluginField> fields;

private:
    nvinfer1::PluginFieldCollection mCollection{};
};

} // namespace testutil
