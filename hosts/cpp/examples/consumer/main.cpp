// count-foreground ENGINES SUPPORT SUPPORT_MASK QUERY: the query's foreground pixel count.
#include <diffseg/diffseg.hpp>

#include <iostream>

int main(int argc, char** argv) {
    if (argc != 5) {
        std::cerr << "usage: count-foreground ENGINES SUPPORT SUPPORT_MASK QUERY\n";
        return 2;
    }
    try {
        auto segmenter = diffseg::FewShotSegmenter::open(argv[1], {"openvino", 0});
        segmenter.set_support({diffseg::read_image(argv[2])}, {diffseg::read_mask(argv[3])});
        const diffseg::Mask mask = segmenter.segment(diffseg::read_image(argv[4]));
        size_t count = 0;
        for (uint8_t v : mask.values) count += v;
        std::cout << count << "\n";
    } catch (const diffseg::Error& err) {
        std::cerr << "error: " << err.what() << "\n";
        return 1;
    }
    return 0;
}
