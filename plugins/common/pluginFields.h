/*
 * A plugin's attributes as PluginFields: one table per op (AttributeField, in getFieldNames order) drives
 * the creator's declared fields, its parsing and checks (readFields), its log line (describeFields) and the
 * plugin's serialization (FieldWriter).
 *
 * TensorRT's ONNX parser sends ONNX INT as kINT32 and FLOAT as kFLOAT32; programmatic users may send
 * kINT64 / kFLOAT64. Each field's type, length and value is checked; a failure is a message naming the
 * field. Fields are declared and serialized as the parser sends them, so one parser serves both paths.
 */
#pragma once

#include "NvInferRuntime.h"

#include <array>
#include <cstddef>
#include <cstdint>
#include <iomanip>
#include <sstream>
#include <string>
#include <vector>

namespace mla
{
namespace plugin
{

//! One attribute of an op's `Attributes` struct: an int32 or a float member, and what its reader accepts.
template <typename Attributes>
struct AttributeField
{
    char const* name;
    int32_t Attributes::*intMember;  //!< the member of an integer attribute (else null)
    float Attributes::*floatMember;  //!< the member of a float attribute (else null)
    int64_t minimum;                 //!< integers: the smallest value accepted (the largest is INT32_MAX)
    bool positive;                   //!< floats: > 0 required (else any finite float32 value)
    bool optional{false};            //!< absent: the member keeps its default (an attribute newer than some files)
};

//! An integer attribute in [minimum, INT32_MAX] (minimum INT32_MIN: any 32-bit integer, for a plugin whose
//! validate names the values it takes).
template <typename Attributes>
constexpr AttributeField<Attributes> intAttribute(char const* name, int32_t Attributes::*member, int64_t minimum)
{
    return {name, member, nullptr, minimum, false};
}

//! An integer attribute as intAttribute that files from before it may lack: then the member keeps its default.
template <typename Attributes>
constexpr AttributeField<Attributes> optionalIntAttribute(
    char const* name, int32_t Attributes::*member, int64_t minimum)
{
    return {name, member, nullptr, minimum, false, true};
}

//! A float attribute, finite and within float32, and > 0 when `positive`.
template <typename Attributes>
constexpr AttributeField<Attributes> floatAttribute(char const* name, float Attributes::*member, bool positive)
{
    return {name, nullptr, member, 0, positive};
}

//! The name of a PluginFieldType, for messages ("kINT32", ...).
char const* fieldTypeName(nvinfer1::PluginFieldType type) noexcept;

//! One integer (kINT32 or kINT64, length 1) in [minimum, INT32_MAX] into `out`; "" or why not.
std::string readIntField(nvinfer1::PluginField const& field, int32_t& out, int64_t minimum);

//! One float (kFLOAT32 or kFLOAT64, length 1), finite and within float32, and > 0 when `positive`; "" or why not.
std::string readFloatField(nvinfer1::PluginField const& field, float& out, bool positive);

//! One attribute bound to the value it fills (exactly one of intValue, floatValue is set).
struct BoundField
{
    char const* name;
    int32_t* intValue;
    float* floatValue;
    int64_t minimum;
    bool positive;
    bool optional; //!< may be absent (the value is left as it was)
};

//! Fills the `count` bound fields from `fc`: every field present once (an optional one at most once), each read by its reader; unknown
//! names ignored with a warning, each field's arrival type logged at VERBOSE (messages start "<op>: ").
//! "" or the first problem, naming the field.
std::string readBoundFields(
    char const* op, nvinfer1::PluginFieldCollection const* fc, BoundField const* fields, size_t count);

//! `table`'s attributes of `attrs` from `fc` (readBoundFields); "" or why not.
template <typename Attributes, size_t N>
std::string readFields(char const* op, nvinfer1::PluginFieldCollection const* fc,
    std::array<AttributeField<Attributes>, N> const& table, Attributes& attrs)
{
    std::array<BoundField, N> bound{};
    for (size_t k = 0; k < N; ++k)
    {
        AttributeField<Attributes> const& f = table[k];
        bound[k] = BoundField{f.name, f.intMember != nullptr ? &(attrs.*f.intMember) : nullptr,
            f.floatMember != nullptr ? &(attrs.*f.floatMember) : nullptr, f.minimum, f.positive, f.optional};
    }
    return readBoundFields(op, fc, bound.data(), N);
}

//! " name=value" for every attribute of `table`, in order (floats to 9 significant digits), for the log.
template <typename Attributes, size_t N>
std::string describeFields(std::array<AttributeField<Attributes>, N> const& table, Attributes const& attrs)
{
    std::ostringstream s;
    for (AttributeField<Attributes> const& f : table)
    {
        s << " " << f.name << "=";
        if (f.intMember != nullptr)
        {
            s << attrs.*f.intMember;
        }
        else
        {
            s << std::setprecision(9) << attrs.*f.floatMember;
        }
    }
    return s.str();
}

//! A PluginFieldCollection over a table's attributes (kINT32 / kFLOAT32, length 1): with the values of an
//! Attributes struct (getFieldsToSerialize), or without values (getFieldNames). The collection points into
//! this writer and the struct: valid while both live and until the next write.
class FieldWriter
{
public:
    FieldWriter() = default;
    FieldWriter(FieldWriter const&) = delete; // the collection points into mFields
    FieldWriter& operator=(FieldWriter const&) = delete;

    //! The fields of `table`, pointing at the members of `*attrs` (no data when `attrs` is null).
    template <typename Attributes, size_t N>
    nvinfer1::PluginFieldCollection const* write(
        std::array<AttributeField<Attributes>, N> const& table, Attributes const* attrs)
    {
        mFields.clear();
        for (AttributeField<Attributes> const& f : table)
        {
            bool const isInt = f.intMember != nullptr;
            void const* data = nullptr;
            if (attrs != nullptr)
            {
                data = isInt ? static_cast<void const*>(&(attrs->*f.intMember)) : &(attrs->*f.floatMember);
            }
            mFields.emplace_back(
                f.name, data, isInt ? nvinfer1::PluginFieldType::kINT32 : nvinfer1::PluginFieldType::kFLOAT32, 1);
        }
        mCollection.nbFields = static_cast<int32_t>(mFields.size());
        mCollection.fields = mFields.data();
        return &mCollection;
    }

    nvinfer1::PluginFieldCollection const* collection() const noexcept { return &mCollection; }

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

} // namespace plugin
} // namespace mla
