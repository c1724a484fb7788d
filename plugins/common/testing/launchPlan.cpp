/*
 * Planned launches against recorded ones (launchPlan.h).
 */
#include "launchPlan.h"

#include "testUtil.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>

namespace testutil
{
namespace
{
// The mismatches of the recorded argument values of `got` against the tokens of `want`; empty when they match.
std::string compareArgs(fake::Event const& got, std::vector<std::string> const& want, PointerResolver const& pointer)
{
    std::ostringstream bad;
    if (got.args.size() != want.size())
    {
        bad << got.args.size() << " arguments recorded, " << want.size() << " expected; ";
        return bad.str();
    }
    for (size_t j = 0; j < want.size(); ++j)
    {
        std::string const kind = want[j].substr(0, 2);
        std::string const value = want[j].substr(2);
        if (kind == "p:")
        {
            uint64_t expected = 0;
            if (pointer(value, expected) && fake::argAs<uint64_t>(got, j) != expected)
            {
                bad << "arg " << j << " is 0x" << std::hex << fake::argAs<uint64_t>(got, j) << ", expected " << value
                    << " 0x" << expected << std::dec << "; ";
            }
        }
        else if (kind == "i:" && fake::argAs<int32_t>(got, j) != std::stoi(value))
        {
            bad << "arg " << j << " is " << fake::argAs<int32_t>(got, j) << ", expected " << value << "; ";
        }
        else if (kind == "f:" && fake::argAs<float>(got, j) != std::stof(value))
        {
            bad << "arg " << j << " is " << fake::argAs<float>(got, j) << ", expected " << value << "; ";
        }
    }
    return bad.str();
}
} // namespace

PlannedLaunch readPlannedLaunch(std::istream& s)
{
    PlannedLaunch planned{fake::Event{fake::Kind::kLaunch}, {}};
    fake::Event& e = planned.event;
    std::string shared;
    s >> e.name >> e.grid[0] >> e.grid[1] >> e.grid[2] >> e.block[0] >> e.block[1] >> e.block[2] >> shared;
    e.sharedMem = shared == "*" ? kAnySharedMem : static_cast<uint32_t>(std::stoul(shared));
    std::vector<uint32_t> sizes;
    for (std::string token; s >> token;)
    {
        planned.args.push_back(token);
        sizes.push_back(token.rfind("p:", 0) == 0 ? 8 : 4);
    }
    if (!planned.args.empty() && e.name != "*")
    {
        fake::setSignature(e.name, sizes);
    }
    return planned;
}

bool readPlanFile(char const* path, std::function<void(std::istream& fields)> const& onCase,
    std::function<void(PlannedLaunch launch)> const& onLaunch)
{
    std::ifstream file(path);
    if (!file)
    {
        std::printf("cannot read %s\n", path);
        return false;
    }
    bool inCase = false;
    std::string line;
    while (std::getline(file, line))
    {
        std::istringstream s(line);
        std::string tag;
        s >> tag;
        if (tag == "case")
        {
            onCase(s);
            inCase = true;
        }
        else if (tag == "launch" && inCase)
        {
            onLaunch(readPlannedLaunch(s));
        }
    }
    return true;
}

void checkLaunches(std::vector<fake::Event> const& got, std::vector<PlannedLaunch> const& plan, std::string const& what,
    PointerResolver const& pointer, bool wildcards)
{
    CHECK_MSG(got.size() == plan.size(),
        what + ": " + std::to_string(got.size()) + " launches, plan has " + std::to_string(plan.size()));
    for (size_t i = 0; i < got.size() && i < plan.size(); ++i)
    {
        fake::Event const& g = got[i];
        fake::Event const& w = plan[i].event;
        bool const same = ((wildcards && w.name == "*") || g.name == w.name) && std::equal(g.grid, g.grid + 3, w.grid)
            && ((wildcards && w.block[0] == 0) || std::equal(g.block, g.block + 3, w.block))
            && ((wildcards && w.sharedMem == kAnySharedMem) || g.sharedMem == w.sharedMem);
        std::ostringstream s;
        s << what << " launch " << i << ": got " << g.name << " grid " << g.grid[0] << "," << g.grid[1] << ","
          << g.grid[2] << " block " << g.block[0] << " smem " << g.sharedMem << "; plan " << w.name << " grid "
          << w.grid[0] << "," << w.grid[1] << "," << w.grid[2] << " block " << w.block[0] << " smem " << w.sharedMem;
        CHECK_MSG(same, s.str());
        if (!plan[i].args.empty())
        {
            std::string const mismatches = compareArgs(g, plan[i].args, pointer);
            CHECK_MSG(mismatches.empty(), what + " launch " + std::to_string(i) + " (" + g.name + "): " + mismatches);
        }
    }
}

} // namespace testutil
