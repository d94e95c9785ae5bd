# Properties of the tests that drive TF.js (node) or the CLI, included by tests/CMakeLists.txt.
# The golden tests run TF.js's pure-JS backend on InceptionV3: slow, so run them alone-ish.
set_tests_properties(test_golden_tfjs PROPERTIES TIMEOUT 900 LABELS "node;golden")
if(TARGET graft_cli)
  foreach(t test_cli_loader_errors test_predict_tfjs test_cli_train)
    if(TEST ${t})
      set_tests_properties(${t} PROPERTIES ENVIRONMENT "GRAFT_CLI=$<TARGET_FILE:graft_cli>")
    endif()
  endforeach()
endif()
