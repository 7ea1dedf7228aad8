// The diffseg C++ host: DiffewS and SLiMe engine directories without Python.
//
//   #include <diffseg/diffseg.hpp>
//   auto seg = diffseg::FewShotSegmenter::open("engines/synth");
//
// See docs/cpp.md for building, linking and deploying it.
#pragma once

#include "diffseg/bank_file.hpp"
#include "diffseg/errors.hpp"
#include "diffseg/fewshot.hpp"
#include "diffseg/graph.hpp"
#include "diffseg/image.hpp"
#include "diffseg/manifest.hpp"
#include "diffseg/parts.hpp"
#include "diffseg/resample.hpp"
