#pragma once
// The built-in math-answer verifier: the final answer of a completion (or of a reference
// solution) and numeric equivalence between two answers.
//
// Final answer: the content of the last \boxed{...} when there is one (braces balanced),
// else the last number in the text. A number is an optional '-', an optional '$', digits with
// optional thousands commas ("1,000"), an optional decimal part, an optional "/denominator"
// and an optional '%'; a trailing sentence period is not part of it.
//
// Equivalence: both sides parsed as numbers ("1,000" == "1000" == "1000.0", "3/4" == "0.75",
// "\frac{3}{4}" == "0.75", "$5" == "5", "75%" == "75") agree to 1e-6 relative; when either is
// not a number, the answers agree when equal after removing spaces, a leading '$' and a
// surrounding \text{...}.
#include <optional>
#include <string>
#include <string_view>

namespace sy {

// The final answer of `text`, or nullopt when there is none (no \boxed{} and no number).
std::optional<std::string> extract_final_answer(std::string_view text);

// The value of an answer ("1,000", "$3.50", "3/4", "\frac{1}{2}", "-7", "40%"), or nullopt.
std::optional<double> parse_number(std::string_view answer);

// True iff the two answers are equivalent (see the file comment).
bool answers_match(std::string_view answer, std::string_view reference);

// The reference answer of a solution: the text after its last "#### " (GSM8K) when present,
// else the whole solution, then its final answer as above.
std::optional<std::string> reference_answer(std::string_view solution);

}  // namespace sy
