// Package importrules holds the test that the dependencies between
// nftproxy's packages point one way (importrules_test.go).
package importrules
