# Script-driven tests, included by tests/CMakeLists.txt.

# tfjs_reference_smoke: the TF.js reference script (tests/node/tfjs_reference.js)
# loads models/mobilenet_v2 and writes golden outputs for one pseudo-random
# sample. It is skipped (exit 77) when `scripts/setup --test-deps` has not
# installed @tensorflow/tfjs or scripts/fetch-models has not run.
find_program(GRAFT_NODE NAMES node nodejs)
if(GRAFT_NODE)
  add_test(NAME tfjs_reference_smoke
           COMMAND ${GRAFT_NODE} ${PROJECT_SOURCE_DIR}/tests/node/tfjs_reference.js --skip-if-missing
                   --model ${PROJECT_SOURCE_DIR}/models/mobilenet_v2
                   --out ${CMAKE_BINARY_DIR}/golden-smoke
                   --layers block_10_project_BN,out_relu --batch 1 --seed 1)
  set_tests_properties(tfjs_reference_smoke PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300
                       LABELS "node;golden")
else()
  add_test(NAME tfjs_reference_smoke COMMAND node --version)
  set_tests_properties(tfjs_reference_smoke PROPERTIES DISABLED TRUE)
endif()
