/*
 * PageAllocator: the pages of a paged latent cache (MlaAttention contract version 2, `export --cache paged`)
 * handed to sequences as they grow, and the block table the engine reads (block_table [B, maxPages] int32:
 * row b, slot j = the page holding positions [j*page, (j+1)*page) of sequence b).
 *
 *     allocate(seq, tokens)   on prefill: ceil(tokens / page) pages
 *     extend(seq, length)     before a step that brings sequence seq to `length` rows: a page when it
 *                             crosses a page edge
 *     release(seq)            when it finishes: its pages back to the free list
 *     blockTable(seqs)        the rows to upload, slots past a sequence's pages set to kUnusedSlot
 *
 * Every refusal is a Status with one message (the pool is exhausted, a sequence longer than the table
 * row, an unknown or duplicate sequence); nothing changes on a refusal. checkBlockTable refuses a table given
 * from elsewhere that breaks the contract's rules. No CUDA or TensorRT here.
 */
#pragma once

#include "mlaStatus.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace mla
{
namespace runtime
{

class PageAllocator
{
public:
    //! Slots past a sequence's pages: an id no implementation may dereference (FlashMLA's tests use it).
    static constexpr int32_t kUnusedSlot = 2147480000;

    //! A pool of `numPages` pages of `pageSize` rows; a block-table row holds `maxPages` slots.
    PageAllocator(int32_t numPages, int32_t pageSize, int32_t maxPages)
        : mPageSize(pageSize), mMaxPages(maxPages)
    {
        for (int32_t p = numPages - 1; p >= 0; --p) mFree.push_back(p); // page 0 handed out first
    }

    int32_t freePages() const { return static_cast<int32_t>(mFree.size()); }

    //! Pages for a new sequence of `tokens` rows (its prefill).
    Status allocate(int64_t seq, int64_t tokens)
    {
        if (mOwned.count(seq)) return Status::error("sequence " + std::to_string(seq) + " already holds pages: "
                                                    "release it first");
        mOwned[seq];
        Status const grown = extend(seq, tokens);
        if (!grown) mOwned.erase(seq);
        return grown;
    }

    //! Enough pages for sequence `seq` to hold `length` rows (one more page when it crosses a page edge).
    Status extend(int64_t seq, int64_t length)
    {
        auto found = mOwned.find(seq);
        if (found == mOwned.end()) return Status::error("sequence " + std::to_string(seq) + " holds no pages: "
                                                        "allocate it first");
        int64_t const needed = (length + mPageSize - 1) / mPageSize;
        if (length < 0 || needed > mMaxPages)
            return Status::error("sequence " + std::to_string(seq) + " needs " + std::to_string(needed)
                + " pages for " + std::to_string(length) + " rows, a block-table row holds "
                + std::to_string(mMaxPages) + ": the engine's cache is too short (re-export with a larger "
                "--max-seq-len)");
        auto const more = static_cast<size_t>(needed) - std::min(found->second.size(), static_cast<size_t>(needed));
        if (more > mFree.size())
            return Status::error("the page pool is exhausted (" + std::to_string(mFree.size()) + " free, "
                + std::to_string(more) + " needed): finish a sequence or allocate a larger pool");
        for (size_t i = 0; i < more; ++i)
        {
            found->second.push_back(mFree.back());
            mFree.pop_back();
        }
        return Status::success();
    }

    //! Sequence `seq`'s pages back to the pool.
    Status release(int64_t seq)
    {
        auto found = mOwned.find(seq);
        if (found == mOwned.end()) return Status::error("sequence " + std::to_string(seq) + " holds no pages");
        for (auto it = found->second.rbegin(); it != found->second.rend(); ++it) mFree.push_back(*it);
        mOwned.erase(found);
        return Status::success();
    }

    //! The block table of `seqs` (in batch order), row-major [seqs.size(), maxPages]; empty on an unknown id.
    std::vector<int32_t> blockTable(std::vector<int64_t> const& seqs) const
    {
        std::vector<int32_t> table(seqs.size() * static_cast<size_t>(mMaxPages), kUnusedSlot);
        for (size_t b = 0; b < seqs.size(); ++b)
        {
            auto found = mOwned.find(seqs[b]);
            if (found == mOwned.end()) return {};
            for (size_t j = 0; j < found->second.size(); ++j) table[b * mMaxPages + j] = found->second[j];
        }
        return table;
    }

private:
    int32_t mPageSize;
    int32_t mMaxPages;
    std::vector<int32_t> mFree;                       //!< free pages, the next one at the back
    std::map<int64_t, std::vector<int32_t>> mOwned;   //!< each sequence's pages, in position order
};

//! The host-side rules of a block table (mla_export/run/block_table.py, the same rules and messages) for a call of
//! `newTokens` tokens over a pool of `numPages` pages of `pageSize` rows: `table` is [batch, maxPages] row-major,
//! `seqlens` [batch]. Among the slots j < ceil((seqlens[b] + newTokens) / pageSize) of each row: every id in the
//! pool, the row long enough, a page once per row, and a page two sequences both touch a full page of their shared
//! prefix (same slot, below both lengths). One message on the first broken rule.
inline Status checkBlockTable(std::vector<int32_t> const& table, std::vector<int32_t> const& seqlens, int64_t newTokens,
    int64_t pageSize, int64_t numPages, int64_t maxPages)
{
    auto const str = [](int64_t v) { return std::to_string(v); };
    if (pageSize <= 0 || maxPages <= 0 || table.size() != seqlens.size() * static_cast<size_t>(maxPages))
        return Status::error("the block table holds " + str(static_cast<int64_t>(table.size())) + " slots, not "
            + str(static_cast<int64_t>(seqlens.size())) + " sequences x " + str(maxPages));
    std::map<int32_t, std::pair<int64_t, int64_t>> owner; // page -> (sequence, slot) of its first use
    for (size_t b = 0; b < seqlens.size(); ++b)
    {
        int64_t const length = seqlens[b];
        if (length < 0)
            return Status::error("cache_seqlens[" + str(b) + "] = " + str(length)
                + ": a sequence's length cannot be negative");
        int64_t const needed = (length + newTokens + pageSize - 1) / pageSize;
        if (needed > maxPages)
            return Status::error("sequence " + str(b) + " needs " + str(needed) + " pages for " + str(length) + " + "
                + str(newTokens) + " rows of " + str(pageSize) + ", but the block table holds " + str(maxPages)
                + " per sequence: raise --max-seq-len or shorten the sequence");
        for (int64_t j = 0; j < needed; ++j)
        {
            int32_t const page = table[b * static_cast<size_t>(maxPages) + static_cast<size_t>(j)];
            if (page < 0 || page >= numPages)
                return Status::error("block_table[" + str(b) + ", " + str(j) + "] = " + str(page)
                    + " is outside the pool of " + str(numPages) + " pages");
            auto const first = owner.find(page);
            if (first == owner.end())
            {
                owner[page] = {static_cast<int64_t>(b), j};
                continue;
            }
            int64_t const other = first->second.first, slot = first->second.second;
            if (other == static_cast<int64_t>(b))
                return Status::error("page " + str(page) + " appears twice in sequence " + str(b)
                    + "'s block table (slots " + str(slot) + " and " + str(j) + ")");
            bool const sharedPrefix = slot == j && (j + 1) * pageSize <= std::min<int64_t>(length, seqlens[other]);
            if (!sharedPrefix)
                return Status::error("page " + str(page) + " is used by sequences " + str(other) + " and " + str(b)
                    + " (slots " + str(slot) + " and " + str(j) + ", lengths " + str(seqlens[other]) + " and "
                    + str(length) + "): two sequences may share only a full page of a common prefix");
        }
    }
    return Status::success();
}

} // namespace runtime
} // namespace mla
