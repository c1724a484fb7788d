/*
 * Unit test of PageAllocator (mlaPages.h): pages handed out on prefill and at page edges, freed on finish and
 * reused, the block table's rows, and every refusal leaving the pool as it was.
 * Prints "N passed, N failed" and returns nonzero on any failure.
 */
#include "mlaPages.h"

#include <algorithm>
#include <cstdio>
#include <set>

namespace
{
int gPassed = 0, gFailed = 0;

void expect(bool condition, char const* what)
{
    if (condition) ++gPassed;
    else { ++gFailed; std::printf("FAILED: %s\n", what); }
}
} // namespace

int main()
{
    using mla::runtime::PageAllocator;
    using mla::runtime::Status;
    PageAllocator pages(/*numPages=*/8, /*pageSize=*/16, /*maxPages=*/4);
    expect(pages.allocate(7, 20).ok && pages.freePages() == 6, "prefill of 20 rows takes 2 pages of 16");
    expect(pages.allocate(9, 16).ok && pages.freePages() == 5, "prefill of exactly one page takes 1");
    expect(pages.extend(9, 16).ok && pages.freePages() == 5, "no new page while the last one has room");
    expect(pages.extend(9, 17).ok && pages.freePages() == 4, "crossing a page edge takes one more page");
    std::vector<int32_t> const table = pages.blockTable({9, 7});
    expect(table.size() == 8, "block table [2, 4]");
    expect(table[2] == PageAllocator::kUnusedSlot && table[3] == PageAllocator::kUnusedSlot
               && table[6] == PageAllocator::kUnusedSlot,
        "slots past a sequence's pages hold the unused id");
    std::set<int32_t> const ids{table[0], table[1], table[4], table[5]};
    expect(ids.size() == 4 && *ids.rbegin() < 8 && *ids.begin() >= 0, "four distinct pages of the pool");
    expect(table[4] < table[0], "pages handed out in allocation order (7 got its pages first)");

    // Refusals change nothing.
    expect(!pages.extend(9, 65) && pages.freePages() == 4, "more rows than a table row holds refused");
    Status const tooLong = pages.extend(9, 65);
    expect(tooLong.message.find("5 pages for 65 rows") != std::string::npos, "the refusal says how many pages");
    expect(!pages.allocate(7, 1) && pages.freePages() == 4, "a sequence allocated twice refused");
    expect(!pages.extend(3, 10), "an unknown sequence refused");
    expect(pages.blockTable({9, 3}).empty(), "the block table of an unknown sequence is refused (empty)");
    expect(pages.allocate(11, 64).ok && pages.freePages() == 0, "the last four pages to a 64-row prefill");
    Status const exhausted = pages.allocate(12, 1);
    expect(!exhausted && exhausted.message.find("exhausted") != std::string::npos && pages.freePages() == 0,
        "an empty pool refuses with one message");
    expect(pages.blockTable({12}).empty(), "a refused allocation leaves no sequence behind");

    // Finishing frees the pages; they are handed out again.
    expect(pages.release(7).ok && pages.freePages() == 2, "finishing a sequence frees its pages");
    expect(!pages.release(7), "finishing twice refused");
    expect(pages.allocate(12, 17).ok && pages.freePages() == 0, "freed pages are reused");
    std::vector<int32_t> const reused = pages.blockTable({12});
    std::set<int32_t> const sevens{table[4], table[5]}; // row 1 of the table above: sequence 7
    expect(sevens.count(reused[0]) == 1 && sevens.count(reused[1]) == 1, "the new sequence got sequence 7's pages");
    // checkBlockTable: the allocator's own tables pass; tables from elsewhere that break a rule are refused.
    {
        using mla::runtime::checkBlockTable;
        int32_t const u = PageAllocator::kUnusedSlot;
        auto refused = [](Status const& st, char const* text) {
            return !st.ok && st.message.find(text) != std::string::npos;
        };
        PageAllocator pool(9, 16, 4);
        expect(pool.allocate(0, 17).ok && pool.allocate(1, 40).ok, "two sequences allocated");
        expect(pool.extend(0, 18).ok && pool.extend(1, 41).ok, "both extended for one more token");
        expect(checkBlockTable(pool.blockTable({0, 1}), {17, 40}, 1, 16, 9, 4).ok, "the allocator's table passes");
        expect(checkBlockTable({4, 1, 2, u, 4, 3, 5, u}, {32, 40}, 1, 16, 6, 4).ok, "a shared full prefix page passes");
        expect(refused(checkBlockTable({0, 9}, {17}, 1, 16, 9, 2), "block_table[0, 1] = 9 is outside the pool of 9"),
            "a page past the pool refused");
        expect(refused(checkBlockTable({0, 1}, {31}, 2, 16, 9, 2), "sequence 0 needs 3 pages for 31 + 2 rows of 16"),
            "a row too short refused");
        expect(refused(checkBlockTable({3, 3, u}, {20}, 1, 16, 9, 3), "page 3 appears twice in sequence 0's"),
            "a page twice in a row refused");
        expect(refused(checkBlockTable({1, 2, 1, 4}, {17, 5}, 1, 16, 9, 2),
                   "page 1 is used by sequences 0 and 1 (slots 0 and 0, lengths 17 and 5)"),
            "a page shared by sequences of different lengths refused");
        expect(refused(checkBlockTable({1, 2, 4, 2}, {20, 20}, 1, 16, 9, 2), "page 2 is used by sequences 0 and 1"),
            "a page both sequences write refused");
        expect(checkBlockTable({0, u, -7, 12345}, {15}, 1, 16, 1, 4).ok, "unused slots are not read");
        expect(refused(checkBlockTable({0, 1, 2}, {1, 1}, 1, 16, 9, 2), "the block table holds 3 slots"),
            "a table of the wrong size refused");
    }
    std::printf("%d passed, %d failed\n", gPassed, gFailed);
    return gFailed == 0 ? 0 : 1;
}
